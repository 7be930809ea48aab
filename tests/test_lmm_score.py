"""LMMScore against a local OpenAI-compatible server on 127.0.0.1: the request (images, rubric, key
from the environment), robust parsing, retries with backoff on timeouts / 5xx / malformed responses,
refusals, the SQLite cache, and per-case failures (an endpoint that is down)."""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import folder_paths
from precise_edit.bench import lmm_score as lmm
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.evaluation.lmm_score import LMMScore

GOOD = '{"editing_accuracy": 8, "contextual_preservation": 6, "visual_quality": 7, "logical_realism": 9}'


class FakeServer:
    """Answers each POST with the next scripted reply: ("json", content) | ("refusal", text) |
    ("status", code) | ("raw", bytes) | ("sleep", seconds)."""

    def __init__(self):
        self.script, self.requests = [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                kind, value = outer.script.pop(0) if outer.script else ("json", GOOD)
                if kind == "sleep":
                    time.sleep(value)
                    kind, value = "json", GOOD
                if kind == "status":
                    self.send_response(value)
                    self.end_headers()
                    self.wfile.write(b"overloaded")
                    return
                if kind == "raw":
                    payload = value
                else:
                    msg = {"role": "assistant", "content": value if kind == "json" else None}
                    if kind == "refusal":
                        msg["refusal"] = value
                    payload = json.dumps({"choices": [{"index": 0, "message": msg}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = FakeServer()
    yield s
    s.close()


def _ep(url, **kw):
    return lmm.Endpoint(url, "tiny-vlm", "PE_TEST_KEY", **{"timeout": 2.0, "max_retries": 2, "backoff": 0.01, **kw})


def test_request_and_weighted_score(server, monkeypatch):
    monkeypatch.setenv("PE_TEST_KEY", "sk-local")
    j = lmm.judge(_ep(server.url), b"SRC", b"EDIT", "make the cat blue")
    assert j.error == "" and j.aspects["editing_accuracy"] == 8
    assert j.score == pytest.approx(0.4 * 8 + 0.3 * 6 + 0.2 * 7 + 0.1 * 9)
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-local"
    assert body["model"] == "tiny-vlm"
    parts = body["messages"][1]["content"]
    assert [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in parts[:2]] == [b"SRC", b"EDIT"]
    assert "make the cat blue" in parts[2]["text"] and "editing_accuracy" in parts[2]["text"]


@pytest.mark.parametrize("text", [
    "```json\n" + GOOD + "\n```",
    "Sure! Here is my rating: " + GOOD.replace("8", '"8/10"') + " Hope it helps.",
    "**Editing accuracy**: 8/10\nContextual preservation: 6\nVisual quality - 7\nLogical realism: 9/10",
    '{"Editing Accuracy": 8, "Contextual-Preservation": 6, "visual quality": 7.0, "logical_realism": 9}',
])
def test_parsing_variants(text):
    assert lmm.parse_scores(text) == {"editing_accuracy": 8, "contextual_preservation": 6,
                                      "visual_quality": 7, "logical_realism": 9}


@pytest.mark.parametrize("text, why", [
    ("I'm sorry, I can't help with rating these images.", "no editing_accuracy"),
    ('{"editing_accuracy": 8, "contextual_preservation": 6}', "no visual_quality, logical_realism"),
    ('{"editing_accuracy": 80, "contextual_preservation": 6, "visual_quality": 7, "logical_realism": 9}', "outside"),
    ("", "empty answer"),
])
def test_parsing_failures(text, why):
    with pytest.raises(lmm.JudgeError, match=why):
        lmm.parse_scores(text)


def test_retries_with_backoff_then_success(server):
    server.script = [("status", 503), ("raw", b"not json"), ("json", GOOD)]
    sleeps = []
    j = lmm.judge(_ep(server.url), b"S", b"E", "x", sleep=sleeps.append)
    assert j.score is not None and j.attempts == 3 and len(server.requests) == 3
    assert sleeps == [0.01, 0.02]


def test_timeout_gives_up_and_reports(server):
    server.script = [("sleep", 1.0)] * 3
    j = lmm.judge(_ep(server.url, timeout=0.2, max_retries=1), b"S", b"E", "x", sleep=lambda s: None)
    assert j.score is None and j.attempts == 2 and "gave up after 2 attempts" in j.error and "timed out" in j.error


def test_refusal_and_client_error_are_not_retried(server):
    server.script = [("refusal", "I can't assist with that.")]
    j = lmm.judge(_ep(server.url), b"S", b"E", "x", sleep=lambda s: None)
    assert j.score is None and j.attempts == 1 and "refused" in j.error
    server.script = [("json", "I cannot rate images of people.")]
    j = lmm.judge(_ep(server.url), b"S", b"E", "x", sleep=lambda s: None)
    assert j.score is None and "refused or malformed" in j.error
    server.script = [("status", 401)]
    j = lmm.judge(_ep(server.url), b"S", b"E", "x", sleep=lambda s: None)
    assert j.score is None and j.attempts == 1 and "HTTP 401" in j.error


def test_cache_per_images_instruction_model(server, tmp_path):
    cache = lmm.Cache(str(tmp_path / "c.sqlite"))
    ep = _ep(server.url)
    first = lmm.judge(ep, b"S", b"E", "x", cache)
    again = lmm.judge(ep, b"S", b"E", "x", lmm.Cache(str(tmp_path / "c.sqlite")))
    assert again.cached and again.score == first.score and len(server.requests) == 1
    lmm.judge(ep, b"S", b"E2", "x", cache)
    lmm.judge(ep, b"S", b"E", "y", cache)
    lmm.judge(_ep(server.url).__class__(server.url, "other-model", timeout=2), b"S", b"E", "x", cache)
    assert len(server.requests) == 4


def test_node_batch_with_per_case_failure_and_down_endpoint(server, tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(tmp_path))
    src = torch.rand(1, 16, 16, 3)
    edited = torch.rand(2, 16, 16, 3)
    server.script = [("json", GOOD), ("refusal", "no")]
    out = LMMScore.execute(src, edited, "make it red", server.url, "tiny-vlm", "", 2.0, 1, True, backoff=0.0)
    assert out.result[0] == pytest.approx(7.3)
    assert "over 1 of 2 images" in out.result[1] and "image 1: failed: the model refused" in out.result[1]
    assert (tmp_path / "precise_edit" / "lmm_score.sqlite").is_file()
    # a closed port: the node still returns, every case marked
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out = LMMScore.execute(src, edited, "make it red", f"http://127.0.0.1:{port}/v1", "tiny-vlm", "", 1.0, 1,
                           False, backoff=0.0)
    assert out.result[0] == -1.0 and out.result[1].count("failed: gave up after 2 attempts") == 2
    with pytest.raises(NodeInputError, match="LMMScore: endpoint must be an http"):
        LMMScore.execute(src, edited, "x", "127.0.0.1:8000", "m")
    with pytest.raises(NodeInputError, match="LMMScore: give the model name"):
        LMMScore.execute(src, edited, "x", server.url, " ")
    with pytest.raises(NodeInputError, match=r"LMMScore: source batch \(2\) must be 1 or match edited \(3\)"):
        LMMScore.execute(edited, torch.rand(3, 16, 16, 3), "x", server.url, "m")


def test_command_over_a_run_marks_failed_cases(server, tmp_path):
    import csv
    from pathlib import Path

    from precise_edit.bench.judge_cli import main

    data = Path(__file__).resolve().parent.parent / "bench" / "data" / "pie_mini"
    ids = list(json.loads((data / "mapping_file.json").read_text()))[:2]
    run = tmp_path / "run"
    for cid in [*ids, "not_in_data"]:
        (run / "cases" / "kv__ab" / cid).mkdir(parents=True)
        (run / "cases" / "kv__ab" / cid / "edited.png").write_bytes(b"PNG" + cid.encode())
    server.script = [("json", GOOD), ("status", 500)]
    rc = main(["lmm", "--run", str(run), "--data", str(data), "--endpoint", server.url, "--model", "m",
               "--max-retries", "0", "--cache", str(tmp_path / "c.sqlite")])
    assert rc == 0
    rows = {r["case_id"]: r for r in csv.DictReader(open(run / "lmm_scores.csv"))}
    assert rows[ids[0]]["status"] == "ok" and float(rows[ids[0]]["score"]) == pytest.approx(7.3)
    assert rows[ids[1]]["status"] == "failed" and "HTTP 500" in rows[ids[1]]["error"]
    assert rows["not_in_data"]["status"] == "failed" and rows["not_in_data"]["method"] == "kv"
    assert server.requests[0][2]["messages"][1]["content"][2]["text"].count(
        json.loads((data / "mapping_file.json").read_text())[ids[0]]["editing_instruction"]) == 1

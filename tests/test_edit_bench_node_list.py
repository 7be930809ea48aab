"""The runner asks a server for its full node list (``/object_info``, every node's schema) only when a
workflow is in UI format and must be converted; API-format workflows get by with one node's entry."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import PACK_DIR
from precise_edit.bench import cli
from precise_edit.bench.client import ComfyClient

PLAIN = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
         "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1.0}},
         "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}}}
UI = {"nodes": [{"id": 1, "type": "LoadImage", "inputs": [], "outputs": [], "widgets_values": ["x.png", "image"]}],
      "links": []}
INFO = {"LoadImage": {"input": {"required": {"image": [["x.png"], {"image_upload": True}]}},
                      "input_order": {"required": ["image"]}, "output_node": False},
        "EditMetrics": {"input": {"required": {}}, "output_node": True}}


def _run(monkeypatch, tmp_path: Path, workflow: dict) -> list[str]:
    calls = []
    monkeypatch.setattr(ComfyClient, "object_info", lambda self: calls.append("/object_info") or dict(INFO))
    monkeypatch.setattr(ComfyClient, "node_info",
                        lambda self, name: calls.append(f"/object_info/{name}") or {name: INFO[name]})
    monkeypatch.setattr(cli, "run", lambda cfg, cases: {"ran": len(cases), "skipped": 0, "failed": 0})
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(workflow))
    cli.main(["--data", str(PACK_DIR / "bench" / "data" / "pie_mini"), "--out", str(tmp_path / "out"),
              "--workflow", str(wf), "--no-progress", "--server", "http://127.0.0.1:1"])
    return calls


def test_api_workflow_does_not_fetch_the_node_list(monkeypatch, tmp_path):
    assert _run(monkeypatch, tmp_path, PLAIN) == ["/object_info/EditMetrics"]


def test_ui_workflow_fetches_the_node_list(monkeypatch, tmp_path):
    assert _run(monkeypatch, tmp_path, UI) == ["/object_info"]


def test_history_polling_sees_a_finished_prompt_within_a_tenth_of_its_time(monkeypatch):
    """Fake clock: the prompt finishes at 0.27 s; the client must notice by 0.27 s + 10 % + 20 ms."""
    from precise_edit.bench import client as client_mod

    clock = [0.0]
    monkeypatch.setattr(client_mod.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(client_mod.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))

    class Resp:
        status_code = 200

        def __init__(self, body):
            self.body = body

        def json(self):
            return self.body

    c = ComfyClient("http://127.0.0.1:1")
    monkeypatch.setattr(c.session, "post", lambda *a, **k: Resp({"prompt_id": "p"}))
    seen = []

    def get(path, **params):
        seen.append(clock[0])
        done = clock[0] >= 0.27
        return Resp({"p": {"status": {"completed": True, "status_str": "success"}, "outputs": {}}} if done else {})

    monkeypatch.setattr(c, "_get", get)
    assert c.run({}) == {}
    assert seen[-1] <= 0.27 * 1.1 + 0.02 + 1e-9, seen

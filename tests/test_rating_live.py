"""The rating page on a live ComfyUI (routes registered by the pack on PromptServer), over HTTP.

A study is made by the RatingStudy node in a queued prompt; then the JSON API is driven as a rater and
as the owner, including every refusal the issue names (unknown study/item 404 without details, another
study's item, out-of-range, duplicate, malformed and oversize bodies, a locked database -> 503).
"""
from __future__ import annotations

import re
import sqlite3

import pytest
import requests

from conftest import COMFYUI_PATH, HELPERS_DIR, PACK_DIR
from harness.comfy_server import ComfyServer

P = "/precise_edit/rating"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ComfyServer(COMFYUI_PATH, PACK_DIR, HELPERS_DIR, tmp_path_factory.mktemp("comfy_rating"),
                      env={"PRECISE_EDIT_RATING_BUSY_TIMEOUT": "0.3"})
    srv.start()
    yield srv
    srv.stop()


def store_of(server):
    from precise_edit.server.store import RatingStore

    return RatingStore(server.base / "user" / "precise_edit" / "rating")


@pytest.fixture(scope="module")
def made(server):
    """A study made by the RatingStudy node: source + its inverse + itself, as two methods."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "precise_edit_house.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "RatingStudy", "inputs": {
            "source": ["1", 0], "edited_a": ["2", 0], "edited_b": ["1", 0], "methods": "inverted, same",
            "instruction": "Invert the colours.", "study_name": "live"}},
    }
    entry = server.run_prompt(prompt, timeout=120)
    text = entry["outputs"]["3"]["text"][0]
    rater = re.search(r"(/precise_edit/rating/rate/(\w+)#key=(\w+))", text)
    owner = re.search(r"/precise_edit/rating/results/(\w+)#owner=(\w+)", text)
    assert rater and owner and rater.group(2) == owner.group(1), text
    return {"study": rater.group(2), "key": rater.group(3), "owner": owner.group(2)}


def join(server, made, name):
    r = requests.post(f"{server.url}{P}/api/studies/{made['study']}/join", json={"key": made["key"], "name": name})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def test_pages_and_menu_extension_are_served(server):
    for path in (P, f"{P}/rate/000000000000", f"{P}/results/000000000000", f"{P}/static/rate.js"):
        assert requests.get(server.url + path).status_code == 200, path
    assert requests.get(f"{server.url}{P}/static/..%2f__init__.py").status_code == 404
    assert requests.get(f"{server.url}{P}/static/store.py").status_code == 404
    exts = requests.get(server.url + "/extensions").json()
    assert any(e.endswith("/rating_menu.js") for e in exts), exts
    js = [e for e in exts if e.endswith("/rating_menu.js")][0]
    assert "PreciseEdit.OpenRatingStudies" in requests.get(server.url + js).text


def test_rater_flow_and_refusals(server, made):
    url = server.url + P
    r = requests.post(f"{url}/api/studies/{made['study']}/join", json={"key": "wrong", "name": "x"})
    assert r.status_code == 404 and r.json() == {"error": "not found"}
    assert requests.post(f"{url}/api/studies/ffffffffffff/join", json={"key": made["key"], "name": "x"}).status_code == 404
    tok = join(server, made, "ann")
    h = {"X-Rater-Token": tok}
    view = requests.get(f"{url}/api/me", headers=h).json()
    assert view["total"] == 1 and view["done"] == 0 and len(view["items"][0]["edits"]) == 2
    assert "inverted" not in str(view)      # blind: no method names reach the rater
    item = view["items"][0]
    img = requests.get(f"{url}/api/images/{item['source']}", headers=h)
    assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
    assert requests.get(f"{url}/api/images/{item['source']}").status_code == 404               # no token
    assert requests.get(f"{url}/api/images/..%2f..%2frating.sqlite", headers=h).status_code == 404
    assert requests.get(f"{url}/api/me").status_code == 404

    scores = {str(e["id"]): [5, 4] for e in item["edits"]}
    good = {"item": item["id"], "scores": scores, "better": item["edits"][0]["id"], "client_id": "c1"}
    post = lambda body, **kw: requests.post(f"{url}/api/answers", headers=kw.get("headers", h), data=body)
    import json

    assert post("{not json").status_code == 400
    assert post("[1, 2]").status_code == 400
    assert post(json.dumps({**good, "pad": "x" * 20000})).status_code == 413
    bad = json.dumps({**good, "scores": {**scores, str(item["edits"][0]["id"]): [9, 4]}})
    r = post(bad)
    assert r.status_code == 400 and "1-5" in r.json()["error"]
    r = post(json.dumps({**good, "item": 10 ** 9}))
    assert r.status_code == 404 and r.json() == {"error": "not found"}
    assert post(json.dumps(good), headers={"X-Rater-Token": "nope"}).status_code == 404

    # a rater of another study submitting for this study's item: refused
    other = store_of(server).create_study("other", [_tiny_item()])
    foreign = {"X-Rater-Token": requests.post(f"{url}/api/studies/{other['study']}/join",
                                              json={"key": other["rater_key"], "name": "eve"}).json()["token"]}
    assert post(json.dumps(good), headers=foreign).status_code == 404

    # a locked database: 503 with "not saved", nothing stored; the resend then succeeds
    hold = sqlite3.connect(store_of(server).db_path, isolation_level=None)
    hold.execute("BEGIN EXCLUSIVE")
    try:
        r = post(json.dumps(good))
        assert r.status_code == 503 and "not saved" in r.json()["error"]
    finally:
        hold.execute("ROLLBACK")
        hold.close()
    assert post(json.dumps(good)).status_code == 200
    assert post(json.dumps(good)).json().get("resent")                       # same client id: already saved
    assert post(json.dumps({**good, "client_id": "c2"})).status_code == 409  # a second answer: duplicate
    assert requests.get(f"{url}/api/me", headers=h).json()["done"] == 1
    assert requests.post(f"{url}/api/undo", headers=h).json() == {"item": item["id"]}
    assert post(json.dumps({**good, "client_id": "c3", "better": None})).status_code == 200

    # owner: results and export need the owner token
    sid = made["study"]
    assert requests.get(f"{url}/api/studies/{sid}/results").status_code == 404
    assert requests.get(f"{url}/api/studies/{sid}/results", headers={"X-Owner-Token": made["key"]}).status_code == 404
    res = requests.get(f"{url}/api/studies/{sid}/results", headers={"X-Owner-Token": made["owner"]}).json()
    assert res["answers"] == 1 and {m["method"] for m in res["methods"]} == {"inverted", "same"}
    assert all(m["win_rate"] == 0.5 and m["instruction_mean"] == 5 for m in res["methods"])   # a tie, all 5s
    csv_text = requests.get(f"{url}/api/studies/{sid}/export.csv", params={"owner": made["owner"]}).text
    assert csv_text.splitlines()[0].startswith("answer,rater,item") and len(csv_text.splitlines()) == 3
    summary = requests.get(f"{url}/api/studies/{sid}/export.csv", params={"owner": made["owner"], "kind": "summary"})
    assert "bt_strength" in summary.text.splitlines()[0]
    assert requests.get(f"{url}/api/studies/{sid}/export.csv").status_code == 404
    listed = requests.get(f"{url}/api/studies").json()["studies"]
    assert sid in {s["id"] for s in listed} and "owner" not in str(listed) and made["key"] not in str(listed)


def _tiny_item():
    import io

    from PIL import Image

    from precise_edit.server.store import NewItem

    def png(c):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), c).save(buf, format="PNG")
        return buf.getvalue()

    return NewItem("x", png("red"), [("a", png("green")), ("b", png("blue"))])

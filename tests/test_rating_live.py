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


# ---- the rater page in headless Chromium: two raters, clicks and keys, then the results view ----------------
COLORS = [("red", "green", "blue"), ("white", "black", "gray"), ("yellow", "purple", "orange")]


@pytest.fixture(scope="module")
def browser_study(server):
    import io

    from PIL import Image

    from precise_edit.server.store import NewItem

    def png(c):
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), c).save(buf, format="PNG")
        return buf.getvalue()

    items = [NewItem(f"instruction {k}", png(s), [("kv", png(a)), ("spot", png(b))], case_id=str(k))
             for k, (s, a, b) in enumerate(COLORS)]
    st = store_of(server)
    made = st.create_study("browser", items)
    with sqlite3.connect(st.db_path) as c:
        method = dict(c.execute("SELECT id, method FROM edits"))
    return made, method, st


@pytest.fixture(scope="module")
def drv():
    from test_browser import _ensure_browser

    browser = _ensure_browser()
    d = browser.start_browser(window=(1366, 800))
    yield d
    d.quit()


def _wait(drv, cond, timeout=15):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.05).until(lambda d: cond(d))


def _text(drv, css):
    from selenium.webdriver.common.by import By

    return drv.find_element(By.CSS_SELECTOR, css).text


def _cards(drv):
    """(edit id, label) of the shown item's edits, in page order."""
    from selenium.webdriver.common.by import By

    return [(int(c.get_attribute("data-edit")), c.find_element(By.TAG_NAME, "h2").text[-1])
            for c in drv.find_elements(By.CSS_SELECTOR, "#images .card[data-edit]")]


def _join(drv, url, name, submit_with_enter):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    drv.get("about:blank")
    drv.get(url)
    drv.execute_script("localStorage.clear()")
    drv.refresh()
    _wait(drv, lambda d: d.find_element(By.ID, "name").is_displayed())
    box = drv.find_element(By.ID, "name")
    box.send_keys(name)
    if submit_with_enter:
        box.send_keys(Keys.ENTER)
    else:
        drv.find_element(By.ID, "start").click()
    _wait(drv, lambda d: _text(d, "#progress") == "1 of 3")


def _answer_by_clicks(drv, plan, method):
    from selenium.webdriver.common.by import By

    for eid, _label in _cards(drv):
        ins, pre = plan[method[eid]]
        for q, v in ((0, ins), (1, pre)):
            drv.find_element(By.CSS_SELECTOR, f'.q[data-edit="{eid}"][data-q="{q}"] button[data-v="{v}"]').click()
    choice = plan["better"]
    target = "tie" if choice is None else next(e for e, _ in _cards(drv) if method[e] == choice)
    drv.find_element(By.CSS_SELECTOR, f'#better button[data-better="{target}"]').click()
    drv.find_element(By.ID, "save").click()


def _answer_by_keys(drv, plan, method, save=True):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    body = drv.find_element(By.TAG_NAME, "body")
    keys = []
    for eid, _label in _cards(drv):
        keys += [str(v) for v in plan[method[eid]]]
    choice = plan["better"]
    keys.append("t" if choice is None else next(lab for e, lab in _cards(drv) if method[e] == choice).lower())
    body.send_keys(*keys)
    if save:
        body.send_keys(Keys.ENTER)


def _item_of(drv, st):
    eid = _cards(drv)[0][0]
    with sqlite3.connect(st.db_path) as c:
        return c.execute("SELECT item_id FROM edits WHERE id=?", (eid,)).fetchone()[0]


def test_two_raters_in_chromium_then_results(server, browser_study, drv):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    made, method, st = browser_study
    rate_url = f"{server.url}{P}/rate/{made['study']}#key={made['rater_key']}"
    given = []   # (rater, item, {method: (instruction, preserve)}, chosen method or None): what the test answered

    def record(rater, plan):
        given.append((rater, item, {m: plan[m] for m in ("kv", "spot")}, plan["better"]))

    # rater ann: clicks; undo (button) of the second answer and a changed answer
    _join(drv, rate_url, "ann", submit_with_enter=False)
    plans = [{"kv": (5, 4), "spot": (2, 3), "better": "kv"}, {"kv": (4, 4), "spot": (2, 2), "better": "kv"},
             {"kv": (3, 5), "spot": (4, 2), "better": "spot"}]
    for k, plan in enumerate(plans):
        item = _item_of(drv, st)
        if k < 2:
            _answer_by_clicks(drv, plan, method)
        else:
            _answer_by_keys(drv, plan, method)
        _wait(drv, lambda d: _text(d, "#progress") == (f"{k + 2} of 3" if k < 2 else "3 of 3, done"))
        if k == 1:
            drv.find_element(By.ID, "undo").click()
            _wait(drv, lambda d: _text(d, "#progress") == "2 of 3")
            assert _item_of(drv, st) == item
            assert len(drv.find_elements(By.CSS_SELECTOR, "#images button.on, #better button.on")) == 5   # prefilled
            plan = {**plan, "spot": (1, 2)}
            eid = next(e for e, _ in _cards(drv) if method[e] == "spot")
            drv.find_element(By.CSS_SELECTOR, f'.q[data-edit="{eid}"][data-q="0"] button[data-v="1"]').click()
            drv.find_element(By.ID, "save").click()
            _wait(drv, lambda d: _text(d, "#progress") == "3 of 3")
        record("ann", plan)
    _wait(drv, lambda d: _text(d, "#status") == "all answers saved")

    # rater bob: keys only; undo with U; a phone-width window; a locked database on the last answer
    _join(drv, rate_url, "bob", submit_with_enter=True)
    plans = [{"kv": (4, 5), "spot": (3, 3), "better": "kv"}, {"kv": (4, 4), "spot": (2, 2), "better": None},
             {"kv": (2, 5), "spot": (4, 3), "better": "spot"}]
    body = lambda: drv.find_element(By.TAG_NAME, "body")
    for k, plan in enumerate(plans):
        item = _item_of(drv, st)
        if k == 1:
            drv.set_window_size(390, 844)
            widths = drv.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            assert widths[0] <= widths[1], f"horizontal scrolling at phone width: {widths}"
            tops = [c.rect["y"] for c in drv.find_elements(By.CSS_SELECTOR, "#images .card")]
            assert tops == sorted(tops) and len(set(tops)) == 3, "cards should stack at phone width"
        if k == 2:
            hold = sqlite3.connect(st.db_path, isolation_level=None)
            hold.execute("BEGIN EXCLUSIVE")
        _answer_by_keys(drv, plan, method)
        if k == 0:
            _wait(drv, lambda d: _text(d, "#progress") == "2 of 3")
            body().send_keys("u")
            _wait(drv, lambda d: _text(d, "#progress") == "1 of 3")
            assert _item_of(drv, st) == item
            body().send_keys(Keys.ENTER)      # the prefilled answer, saved again
            _wait(drv, lambda d: _text(d, "#progress") == "2 of 3")
        if k == 2:
            try:
                _wait(drv, lambda d: "not saved" in _text(d, "#status"))
                assert _text(drv, "#progress") == "3 of 3, done"
                assert len(drv.execute_script(f"return JSON.parse(localStorage.getItem('pe-rating:{made['study']}:queue'))")) == 1
            finally:
                hold.execute("ROLLBACK")
                hold.close()
        record("bob", plan)
    _wait(drv, lambda d: _text(d, "#status") == "all answers saved")
    drv.set_window_size(1366, 800)

    rows = st.answer_rows(made["study"])
    assert len(rows) == 12 and {r["rater"] for r in rows} == {"ann", "bob"}

    # the results view shows the aggregates of exactly those answers (computed here by hand)
    drv.get("about:blank")
    drv.get(f"{server.url}{P}/results/{made['study']}#owner={made['owner_token']}")
    _wait(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#methods tr[data-method]")) == 2)
    assert _text(drv, "#counts") == "6 answers from 2 raters"
    import numpy as np

    for m in ("kv", "spot"):
        ins = [g[2][m][0] for g in given]
        pre = [g[2][m][1] for g in given]
        wins = sum(1.0 if g[3] == m else 0.5 if g[3] is None else 0.0 for g in given)
        row = f'#methods tr[data-method="{m}"]'
        assert _text(drv, f"{row} .instruction").startswith(f"{np.mean(ins):.2f} [")
        assert _text(drv, f"{row} .preserve").startswith(f"{np.mean(pre):.2f} [")
        assert _text(drv, f"{row} .win") == f"{wins / len(given):.3f}"
    assert _text(drv, '#methods tr[data-method="kv"] .rank') == "1"   # kv won 3.5 of 6
    kd = pytest.importorskip("krippendorff")
    units = sorted({(g[1], m) for g in given for m in ("kv", "spot")})
    for q, col in (("instruction", 0), ("preserve", 1)):
        data = np.full((2, len(units)), np.nan)
        for g in given:
            for m in ("kv", "spot"):
                data[("ann", "bob").index(g[0]), units.index((g[1], m))] = g[2][m][col]
        alpha = kd.alpha(reliability_data=data, level_of_measurement="ordinal")
        assert _text(drv, f'#agreement tr[data-question="{q}"] .alpha') == f"{alpha:.3f}"

"""The shipped workflows in ComfyUI's real frontend (headless Chromium, one server, one browser).

Every workflow is loaded with ``window.app.loadGraphData(json)``: no node may be missing (an
unregistered type), no error dialog may open, no two nodes may overlap at the sizes the
frontend actually gives them, and the saved view must show the note and the graph right of
the sidebar and below the menus.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/bootstrap.py`` installs them
when missing and it runs as root); the test tries the same when they are missing and skips,
with the reason, only where they cannot be installed (not root, no apt-get).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import COMFYUI_PATH, HELPERS_DIR, PACK_DIR

WORKFLOWS = sorted((PACK_DIR / "example_workflows").glob("*.json"))


def _ensure_browser():
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -r requirements-test.txt)")
    from harness import browser

    if all(browser.find_browser()):
        return browser
    can_install = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")
    if not can_install:
        pytest.skip("chromium / chromium-driver missing and cannot be installed here (needs root and apt-get: "
                    "apt-get install chromium chromium-driver)")
    import sys

    subprocess.run([sys.executable, str(PACK_DIR / "scripts" / "bootstrap.py"), "--browser-only"], check=True)
    assert all(browser.find_browser()), "installing chromium / chromium-driver did not provide them"
    return browser


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    browser = _ensure_browser()
    import requests

    from harness.comfy_server import ComfyServer

    srv = ComfyServer(COMFYUI_PATH, PACK_DIR, HELPERS_DIR, tmp_path_factory.mktemp("comfy_ui"))
    srv.start()
    drv = None
    try:
        # a returning user: no first-run template dialog over the canvas
        requests.post(f"{srv.url}/settings/Comfy.TutorialCompleted", json=True, timeout=30).raise_for_status()
        drv = browser.start_browser()
        browser.open_ui(drv, srv.url)
        yield browser, drv
    finally:
        if drv is not None:
            drv.quit()
        srv.stop()


def _describe(ui, workflow):
    browser, drv = ui
    browser.close_dialogs(drv)
    info = browser.load_workflow(drv, workflow)
    info["dialogs"] = browser.open_dialogs(drv)
    return info


def test_a_missing_node_is_detected(ui):
    """The checks below can fail: an unknown node type is reported as unregistered and the
    frontend opens its missing-nodes dialog."""
    wf = json.loads(WORKFLOWS[0].read_text())
    wf["nodes"][-1]["type"] = "NoSuchNodeAnywhere"
    info = _describe(ui, wf)
    assert any(not n["registered"] for n in info["nodes"])
    assert info["dialogs"], "the frontend should have opened a missing-nodes dialog"
    ui[0].close_dialogs(ui[1])


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_in_the_frontend(ui, path):
    browser = ui[0]
    info = _describe(ui, json.loads(path.read_text()))
    assert not info["errors"], info["errors"]
    missing = sorted({n["type"] for n in info["nodes"] if not n["registered"]})
    assert not missing, f"nodes missing in the frontend: {missing}"
    assert not info["dialogs"], f"dialogs opened on load: {info['dialogs']}"
    clash = browser.overlaps(info["nodes"])
    assert not clash, f"overlapping nodes at the frontend's real sizes: {clash}"

    scale, (ox, oy) = info["scale"], info["offset"]
    cl, ct, cw, ch = info["canvas"]
    side_right = (info["sidebar"][0] + info["sidebar"][2]) if info["sidebar"] else cl
    top_bottom = (info["topbar"][1] + info["topbar"][3]) if info["topbar"] else ct

    def screen(b):
        return (cl + (b[0] + ox) * scale, ct + (b[1] + oy) * scale, b[2] * scale, b[3] * scale)

    note = [n for n in info["nodes"] if n["type"] in ("MarkdownNote", "Note")]
    assert note, "no note in the workflow"
    nx, ny, nw, nh = screen(note[0]["bounding"])
    assert nx >= side_right and ny >= top_bottom and nx + nw <= cl + cw and ny + nh <= ct + ch, (
        f"the note is not in view: {(nx, ny, nw, nh)}, sidebar ends at x={side_right}, menus at y={top_bottom}")
    first_x = min(n["bounding"][0] for n in info["nodes"])
    assert screen((first_x, 0, 0, 0))[0] >= side_right, "the first column is under the sidebar"
    boxes = [screen(n["bounding"]) for n in info["nodes"]]
    in_view = [b for b in boxes if b[0] + b[2] <= cl + cw and b[1] + b[3] <= ct + ch]
    assert not info["low_quality"], f"at scale {scale} the frontend draws nodes without their text"
    assert len(in_view) >= 0.5 * len(boxes), (
        f"only {len(in_view)} of {len(boxes)} nodes are in view at scale {scale}")


OPEN_RATING = """
const done = arguments[arguments.length - 1];
(async () => {
  const ext = (window.app.extensions || []).find(e => e.name === 'PreciseEdit.Rating');
  const opened = [];
  const real = window.open;
  window.open = (u) => { opened.push(String(u)); return null; };
  try { await window.app.extensionManager.command.execute('PreciseEdit.OpenRatingStudies'); }
  catch (e) { opened.push('error: ' + e); }
  finally { window.open = real; }
  done({loaded: !!ext, menu: ext ? JSON.stringify(ext.menuCommands) : null, opened});
})();
"""


def test_rating_menu_entry_opens_the_studies_list(ui):
    """The pack's frontend extension (web/rating_menu.js) is loaded by ComfyUI's frontend; its menu
    command opens the rating studies list, which the pack's routes serve."""
    import requests

    browser, drv = ui
    drv.set_script_timeout(30)
    info = drv.execute_async_script(OPEN_RATING)
    assert info["loaded"] and "PreciseEdit.OpenRatingStudies" in info["menu"], info
    assert len(info["opened"]) == 1 and info["opened"][0].endswith("/precise_edit/rating"), info
    page = requests.get(info["opened"][0], timeout=30)
    assert page.status_code == 200 and "Rating studies" in page.text

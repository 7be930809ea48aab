"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driving ComfyUI's own frontend.

Used by the browser test and by ``scripts/build_workflows.py --measure`` (real node sizes).
No browser is ever downloaded: the system's ``chromium`` and ``chromedriver`` are used, and
Selenium Manager is never asked for one (an explicit driver path is given).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

WINDOW = (1600, 900)   # the window the saved views are designed for (a laptop-size browser window)

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def find_browser() -> tuple[str | None, str | None]:
    """Paths of the browser and its driver (``None`` where missing)."""
    browser = next((p for p in (shutil.which(n) for n in CHROMIUM) if p), None)
    driver = next((p for p in (shutil.which(n) for n in DRIVERS) if p), None)
    if driver is None and Path("/usr/lib/chromium/chromedriver").exists():
        driver = "/usr/lib/chromium/chromedriver"
    return browser, driver


def start_browser(window=WINDOW):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    if not browser or not driver:
        raise RuntimeError("no chromium / chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={window[0]},{window[1]}", "--force-device-scale-factor=1",
                "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


APP_READY = """
return !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph
          && Object.keys(window.LiteGraph.registered_node_types || {}).length > 50);
"""


def open_ui(drv, url: str, timeout: float = 180.0) -> None:
    """Open the ComfyUI page and wait until the app and its node definitions are loaded; skip
    the first-run template dialog and tutorial."""
    drv.get(url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if drv.execute_script(APP_READY):
                break
        except Exception:  # noqa: BLE001  (page still loading)
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError(f"the ComfyUI frontend did not come up in {timeout}s")
    close_dialogs(drv)


CLOSE_DIALOGS = """
document.querySelectorAll('.p-dialog-mask').forEach(m => {
  const b = m.querySelector('.p-dialog-close-button, .p-dialog-header-close, button[aria-label="Close"]');
  if (b) b.click();
});
document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}));
"""

OPEN_DIALOGS = """
return Array.from(document.querySelectorAll('.p-dialog, [role="dialog"], [role="alertdialog"]'))
  .filter(d => d.offsetParent !== null || getComputedStyle(d).display !== 'none' && d.getClientRects().length)
  .map(d => (d.innerText || '').trim().slice(0, 400));
"""


def close_dialogs(drv) -> None:
    for _ in range(3):
        if not drv.execute_script(OPEN_DIALOGS):
            return
        drv.execute_script(CLOSE_DIALOGS)
        time.sleep(0.5)


def open_dialogs(drv) -> list[str]:
    return drv.execute_script(OPEN_DIALOGS)


LOAD_AND_DESCRIBE = """
const [wf, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const errors = [];
  try { await window.app.loadGraphData(wf, true, true, 'pe-test'); } catch (e) { errors.push(String(e)); }
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  window.app.canvas.draw(true, true);
  await new Promise(r => setTimeout(r, 300));
  const LG = window.LiteGraph;
  const nodes = window.app.graph._nodes.map(n => {
    const b = n.getBounding ? Array.from(n.getBounding()) : [n.pos[0], n.pos[1] - LG.NODE_TITLE_HEIGHT,
                                                              n.size[0], n.size[1] + LG.NODE_TITLE_HEIGHT];
    let min = null;
    try { min = Array.from(n.computeSize()); } catch (e) {}
    return {id: n.id, type: n.type, title: n.title, pos: Array.from(n.pos), size: Array.from(n.size),
            bounding: b, min: min, registered: !!LG.registered_node_types[n.type],
            has_errors: !!n.has_errors};
  });
  const ds = window.app.canvas.ds;
  const canvasRect = window.app.canvas.canvas.getBoundingClientRect();
  const side = document.querySelector('.side-tool-bar-container, .side-bar-panel, nav.side-tool-bar');
  const sideRect = side ? side.getBoundingClientRect() : null;
  const top = document.querySelector('.comfyui-menu, .workflow-tabs-container, .top-menubar');
  const topRect = top ? top.getBoundingClientRect() : null;
  done({errors, nodes, scale: ds.scale, offset: Array.from(ds.offset),
        canvas: [canvasRect.left, canvasRect.top, canvasRect.width, canvasRect.height],
        sidebar: sideRect ? [sideRect.left, sideRect.top, sideRect.width, sideRect.height] : null,
        topbar: topRect ? [topRect.left, topRect.top, topRect.width, topRect.height] : null,
        title_height: LG.NODE_TITLE_HEIGHT, low_quality: !!window.app.canvas.low_quality});
})();
"""


def load_workflow(drv, workflow: dict, timeout: float = 60.0) -> dict:
    """Load a UI-format workflow with ``app.loadGraphData`` and describe what the frontend
    made of it: every node's real position, size and bounding box, the view, the sidebar."""
    drv.set_script_timeout(timeout)
    return drv.execute_async_script(LOAD_AND_DESCRIBE, json.loads(json.dumps(workflow)))


def overlaps(nodes: list[dict], gap: float = 0.0) -> list[tuple]:
    """Pairs of nodes whose bounding boxes (title bar included) intersect."""
    out = []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["bounding"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["bounding"]
            if ax < bx + bw + gap and bx < ax + aw + gap and ay < by + bh + gap and by < ay + ah + gap:
                out.append((f"{a['type']} #{a['id']}", f"{b['type']} #{b['id']}"))
    return out

"""Write the example workflows in ``example_workflows/`` (UI format, as the ComfyUI editor
saves them), each with a thumbnail for the template browser.

Keeping them as code makes links and widget orders consistent; the live-server test then
loads every JSON through ComfyUI's own ``/object_info`` and runs it, and the browser test
loads every one into ComfyUI's frontend, so a stale or wrong file fails CI.
Run: ``.venv/bin/python scripts/build_workflows.py`` (thumbnails need Pillow, which the
pack's environment has).

What every workflow gets here, without its script doing anything (so new methods' workflows
get it too):

* **Template browser**: ComfyUI serves a pack's ``example_workflows/*.json`` at
  ``/api/workflow_templates/<pack>/`` and the frontend (1.x) titles each card with the file
  name and shows ``<file name>.jpg`` beside it as the thumbnail; there is no index file for
  custom-node templates. So the file name is the workflow's readable ``label``.
* **Layout**: nodes keep the columns and the top-to-bottom order their script gives (by
  ``pos``), but columns and rows are spaced by the nodes' real sizes: a node is at least
  as large as the frontend draws it (widgets, sockets and title; see :func:`min_size`), so
  no two nodes overlap. The note (MarkdownNote) goes above the graph.
* **View**: the saved view (``extra.ds``) shows the note and as much of the graph as fits
  in a laptop-size window, right of the frontend's sidebar and below its menus.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "example_workflows"
LEGACY_OUT = ROOT / "workflows"       # where earlier versions wrote them

# Frontend geometry (ComfyUI frontend 1.3x, measured in headless Chromium at 1600x900,
# tests/harness/browser.py): the canvas is 1600x757; the sidebar covers x < 59, the banner,
# tabs and menu bar y < 78, the run toolbar the top right and the minimap the bottom right.
TITLE_H = 30
VIEW_BOX = (90, 150, 1400, 690)       # left, top, right, bottom of the area a saved view fills
MIN_SCALE = 0.65                      # below ~0.57 the frontend stops drawing node text (LOD: 14 px font < 8 px)
COL_GAP, ROW_GAP = 50, 30             # between node boxes (title bar included)
NOTE_TYPES = {"MarkdownNote", "Note"}
# Example pictures the workflows load, drawn by scripts/make_example_images.py and copied into
# ComfyUI's input folder when the pack loads (nodes/examples.py); their prompts describe them.
EXAMPLE_IMAGE = "precise_edit_cat_on_bench.png"   # a grey cat on a wooden bench; the cat is the painted region
class Workflow:
    def __init__(self, title: str, label: str | None = None):
        """``title``: a stable slug (the workflow's id is derived from it); ``label``: the
        readable title the template browser shows (and the file name)."""
        self.title = title
        self.label = label or title.replace("_", " ").capitalize()
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def node(self, ntype: str, pos, widgets=(), inputs=(), outputs=(), title=None, size=(320, 120),
             mode: int = 0) -> int:
        nid = len(self.nodes) + 1
        node = {
            "id": nid, "type": ntype, "pos": list(pos), "size": list(size), "flags": {},
            "order": nid - 1, "mode": mode,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": ntype},
            "widgets_values": list(widgets),
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return nid

    def link(self, src: int, out_slot: int, dst: int, input_name: str) -> None:
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        slot = next(i for i, inp in enumerate(d["inputs"]) if inp["name"] == input_name)
        ltype = s["outputs"][out_slot]["type"]
        d["inputs"][slot]["link"] = lid
        s["outputs"][out_slot]["links"].append(lid)
        self.links.append([lid, src, out_slot, dst, slot, ltype])

    def note(self, pos, text: str, size=(420, 160)) -> int:
        return self.node("MarkdownNote", pos, widgets=[text], size=size, title="About this workflow")

    def to_json(self) -> dict:
        nodes = layout(self.nodes)
        return {
            # the editor validates the id as a UUID; a name-based one keeps rebuilt files stable
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-precise-edit/{self.title}")), "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": nodes, "links": self.links, "groups": [], "config": {},
            "extra": {"ds": view(nodes)}, "version": 0.4,
        }


# ---------------------------------------------------------------------------- layout

def _widget_rows(node: dict) -> int:
    if node["type"] in NOTE_TYPES:
        return 0
    return len(node.get("widgets_values") or [])


def min_size(node: dict) -> tuple[int, int]:
    """At least the size the frontend gives the node (it grows smaller saved sizes): a row of
    24 px per widget, 22 px per socket row, the title's width. Checked against the real
    frontend by tests/test_browser.py (a node larger than this would overlap its neighbour)."""
    title = node.get("title") or node["type"]
    sockets = max(len([i for i in node["inputs"] if i.get("link") is not None or "widget" not in i]),
                  len(node["outputs"]))
    w = max(220, 8 * len(title) + 70)
    h = 24 * _widget_rows(node) + 22 * sockets + 16
    return w, h


def _box(node: dict) -> tuple[float, float, float, float]:
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - TITLE_H, w, h + TITLE_H


def layout(nodes: list[dict]) -> list[dict]:
    """Copies of ``nodes`` placed without overlap (see the module docstring)."""
    out = [json.loads(json.dumps(n)) for n in nodes]
    for n in out:
        mw, mh = min_size(n)
        n["size"] = [max(int(n["size"][0]), mw), max(int(n["size"][1]), mh)]
    notes = [n for n in out if n["type"] in NOTE_TYPES]
    graph = [n for n in out if n["type"] not in NOTE_TYPES]
    x0 = min((n["pos"][0] for n in out), default=0)
    y = min((n["pos"][1] for n in out), default=0)
    nx, row_h = x0, 0   # notes side by side above the graph, in the order the workflow adds them
    for n in notes:
        n["pos"] = [nx, y + TITLE_H]
        nx += n["size"][0] + COL_GAP
        row_h = max(row_h, TITLE_H + n["size"][1] + ROW_GAP)
    y += row_h
    columns: dict[float, list[dict]] = {}
    for n in graph:
        columns.setdefault(n["pos"][0], []).append(n)
    x = x0
    for cx in sorted(columns):
        col = sorted(columns[cx], key=lambda n: n["pos"][1])
        cy = y
        for n in col:
            n["pos"] = [x, cy + TITLE_H]
            cy += TITLE_H + n["size"][1] + ROW_GAP
        x += max(n["size"][0] for n in col) + COL_GAP
    return out


def view(nodes: list[dict]) -> dict:
    """``extra.ds``: scale and offset (screen = (canvas + offset) * scale) that put the graph's
    top-left corner (the note) at the view box's top-left and fit as much as readable."""
    boxes = [_box(n) for n in nodes] or [(0, 0, 1, 1)]
    left = min(b[0] for b in boxes)
    top = min(b[1] for b in boxes)
    right = max(b[0] + b[2] for b in boxes)
    bottom = max(b[1] + b[3] for b in boxes)
    vl, vt, vr, vb = VIEW_BOX
    scale = min(1.0, (vr - vl) / (right - left), (vb - vt) / (bottom - top))
    scale = round(max(MIN_SCALE, scale), 3)
    return {"scale": scale, "offset": [round(vl / scale - left, 1), round(vt / scale - top, 1)]}


# ------------------------------------------------------------------------- thumbnails

def thumbnail(wf: "Workflow", data: dict, path: Path, size=(512, 512)) -> bool:
    """A card picture for the template browser: the graph's boxes and links, the pack's
    nodes highlighted, and the workflow's label. Returns False without Pillow."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return False
    W, H = size
    img = Image.new("RGB", size, (32, 34, 40))
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=22)
        small = ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        font = small = ImageFont.load_default()
    nodes = [n for n in data["nodes"] if n["type"] not in NOTE_TYPES]
    boxes = {n["id"]: _box(n) for n in nodes}
    left = min(b[0] for b in boxes.values())
    top = min(b[1] for b in boxes.values())
    right = max(b[0] + b[2] for b in boxes.values())
    bottom = max(b[1] + b[3] for b in boxes.values())
    lines, line = [], ""
    for word in wf.label.split():
        if line and d.textlength(f"{line} {word}", font=font) > W - 32:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for i, text in enumerate(lines):
        d.text((16, 14 + 30 * i), text, fill=(255, 255, 255), font=font)
    head = 14 + 30 * len(lines)
    d.text((16, head + 2), "comfyui-precise-edit", fill=(150, 190, 255), font=small)
    area = (16, head + 30, W - 16, H - 16)
    k = min((area[2] - area[0]) / (right - left), (area[3] - area[1]) / (bottom - top))

    def tr(x, y):
        return area[0] + (x - left) * k, area[1] + (y - top) * k

    pack = _pack_node_types()
    for _, src, sslot, dst, _, _ in data["links"]:
        if src in boxes and dst in boxes:
            a, b = boxes[src], boxes[dst]
            d.line([tr(a[0] + a[2], a[1] + TITLE_H + 10), tr(b[0], b[1] + TITLE_H + 10)], fill=(110, 120, 140), width=2)
    for n in nodes:
        x, y, w, h = boxes[n["id"]]
        x0, y0 = tr(x, y)
        x1, y1 = tr(x + w, y + h)
        ours = n["type"] in pack
        d.rectangle([x0, y0, x1, y1], fill=(58, 92, 150) if ours else (62, 64, 72),
                    outline=(150, 190, 255) if ours else (100, 104, 112), width=2 if ours else 1)
        d.rectangle([x0, y0, x1, y0 + max(3, TITLE_H * k)], fill=(80, 122, 190) if ours else (80, 82, 92))
        label = n.get("title") or n["type"]
        while label and d.textlength(label, font=small) > (x1 - x0) - 6:
            label = label[:-1]
        if label and (x1 - x0) > 30:
            d.text((x0 + 3, y0 + 1), label, fill=(235, 235, 240), font=small)
    img.save(path, "JPEG", quality=85)
    return True


def _pack_node_types() -> set[str]:
    """Node ids the pack defines (read from its sources, so ComfyUI need not be imported)."""
    import re

    found = set()
    for f in (ROOT / "nodes").rglob("*.py"):
        text = f.read_text()
        found |= set(re.findall(r'node_id="([A-Za-z0-9_]+)"', text))
        found |= set(re.findall(r'^(?:NODE|MAP_NODE|[A-Z_]*NODE)\s*=\s*"([A-Za-z0-9_]+)"', text, re.M))
    return found


def edit_region_preview_flux() -> Workflow:
    wf = Workflow("edit_region_preview_flux", "Edit Region Preview (FLUX)")
    wf.note((20, -200), "**Edit Region Preview** shows which 16 px FLUX tokens an edit will regenerate "
                        "(red) and which it keeps (blue).\n\nThe example picture comes with its region (the cat) painted; "
                        "paint your own in the Load Image node's mask editor (right click > Open in MaskEditor), "
                        "then queue.")
    unet = wf.node("UNETLoader", (20, 20), widgets=["flux1-dev.safetensors", "default"],
                   outputs=[("MODEL", "MODEL")], size=(320, 90))
    img = wf.node("LoadImage", (20, 160), widgets=[EXAMPLE_IMAGE, "image"],
                  outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], size=(320, 320))
    prev = wf.node("EditRegionPreview", (400, 60), inputs=[("model", "MODEL"), ("image", "IMAGE"), ("mask", "MASK")],
                   outputs=[("overlay", "IMAGE"), ("computed_fraction", "FLOAT")], size=(320, 320))
    show = wf.node("PreviewImage", (760, 60), inputs=[("images", "IMAGE")], size=(320, 320))
    wf.link(unet, 0, prev, "model")
    wf.link(img, 0, prev, "image")
    wf.link(img, 1, prev, "mask")
    wf.link(prev, 0, show, "images")
    return wf


WORKFLOWS = [edit_region_preview_flux]


def all_workflows() -> list:
    """This file's workflows plus ``WORKFLOWS`` of every ``scripts/workflows_*.py`` module
    (one module per method, each importing :class:`Workflow` from here)."""
    import importlib.util

    found = list(WORKFLOWS)
    for path in sorted(Path(__file__).resolve().parent.glob("workflows_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found += list(module.WORKFLOWS)
    return found


def file_stem(wf: "Workflow") -> str:
    """The file name (without extension) the template browser shows as the card's title."""
    bad = '/\\:*?"<>|'
    return "".join("-" if c in bad else c for c in wf.label).strip()


def main() -> None:
    OUT.mkdir(exist_ok=True)
    written = set()
    pillow = True
    for make in all_workflows():
        wf = make()
        stem = file_stem(wf)
        data = wf.to_json()
        path = OUT / f"{stem}.json"
        path.write_text(json.dumps(data, indent=1) + "\n")
        written.add(path.name)
        if thumbnail(wf, data, OUT / f"{stem}.jpg"):
            written.add(f"{stem}.jpg")
        else:
            pillow = False
        print(f"wrote {path.relative_to(ROOT)}")
    for old in OUT.glob("*"):
        stale_kinds = (".json", ".jpg") if pillow else (".json",)   # without Pillow, keep the thumbnails
        if old.suffix in stale_kinds and old.name not in written:
            old.unlink()
            print(f"removed stale {old.relative_to(ROOT)}")
    if LEGACY_OUT.is_dir() and all(p.suffix == ".json" for p in LEGACY_OUT.iterdir()):
        shutil.rmtree(LEGACY_OUT)
        print(f"removed {LEGACY_OUT.relative_to(ROOT)}/ (workflows now live in {OUT.relative_to(ROOT)}/)")
    if not pillow:
        print("thumbnails need Pillow: run this script with the pack's environment (.venv/bin/python)")


if __name__ == "__main__":
    main()

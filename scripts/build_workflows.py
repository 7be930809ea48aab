"""Write the example workflows in ``workflows/`` (UI format, as the ComfyUI editor saves them).

Keeping them as code makes links and widget orders consistent; the live-server test then
loads every JSON through ComfyUI's own ``/object_info`` and runs it, so a stale or wrong
file fails CI. Run: ``python3 scripts/build_workflows.py``.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "workflows"


class Workflow:
    def __init__(self, title: str):
        self.title = title
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
        return {
            # the editor validates the id as a UUID; a name-based one keeps rebuilt files stable
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-precise-edit/{self.title}")), "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4,
        }


def edit_region_preview_flux() -> Workflow:
    wf = Workflow("edit_region_preview_flux")
    wf.note((20, -200), "**Edit Region Preview** shows which 16 px FLUX tokens an edit will regenerate "
                        "(red) and which it keeps (blue).\n\nPaint the region to edit in the Load Image "
                        "node's mask editor (right click > Open in MaskEditor), then queue.")
    unet = wf.node("UNETLoader", (20, 20), widgets=["flux1-dev.safetensors", "default"],
                   outputs=[("MODEL", "MODEL")], size=(320, 90))
    img = wf.node("LoadImage", (20, 160), widgets=["example.png", "image"],
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


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for make in all_workflows():
        wf = make()
        path = OUT / f"{wf.title}.json"
        path.write_text(json.dumps(wf.to_json(), indent=1) + "\n")
        print(f"wrote {path.relative_to(OUT.parent)}")


if __name__ == "__main__":
    main()

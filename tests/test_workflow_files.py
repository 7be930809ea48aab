"""Every shipped workflow is a well-formed UI-format graph the ComfyUI editor accepts."""
import json
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_structure(path):
    wf = json.loads(path.read_text())
    uuid.UUID(wf["id"])  # the editor's schema requires a UUID
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and wf["last_node_id"] >= max(nodes)
    links = {lk[0]: lk for lk in wf["links"]}
    assert len(links) == len(wf["links"]) and wf["last_link_id"] >= max(links, default=0)
    for lid, src, src_slot, dst, dst_slot, ltype in wf["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert lid in out["links"] and inp["link"] == lid
        assert out["type"] == ltype, (path.name, lid)
        accepted = inp["type"].split(",")  # ComfyUI's multi-type inputs list their types
        assert ltype in accepted or "*" in accepted, (path.name, lid)
    for n in wf["nodes"]:
        for inp in n.get("inputs", []):
            assert inp["link"] is None or inp["link"] in links
        for out in n.get("outputs", []):
            assert all(lk in links for lk in out.get("links") or [])


def test_workflows_are_generated_from_scripts():
    """`python3 scripts/build_workflows.py` reproduces the committed files exactly."""
    import importlib.util
    import sys

    scripts = Path(__file__).resolve().parent.parent / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        spec = importlib.util.spec_from_file_location("build_workflows", scripts / "build_workflows.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["build_workflows"] = mod
        spec.loader.exec_module(mod)
        built = {mod.file_stem(make()): make() for make in mod.all_workflows()}
    finally:
        sys.path.remove(str(scripts))
    assert sorted(built) == [p.stem for p in WORKFLOWS]
    assert not (ROOT / "workflows").exists(), "workflows/ is the old folder: run scripts/build_workflows.py"
    for p in WORKFLOWS:
        assert json.loads(p.read_text()) == built[p.stem].to_json(), f"{p.name} is stale: rebuild it"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_workflow_has_a_thumbnail_and_a_readable_title(path):
    """The template browser titles a card with the file name and shows ``<name>.jpg``."""
    from PIL import Image

    thumb = path.with_suffix(".jpg")
    assert thumb.exists(), f"{thumb.name} missing: run scripts/build_workflows.py with Pillow"
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.size == (512, 512)
    assert " " in path.stem and "_" not in path.stem, f"{path.stem!r} reads like a slug, not a title"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_saved_view_shows_the_note(path):
    """The saved view puts the note's top-left corner right of the sidebar and below the
    menus of a 1600x900 window, at a readable scale (the browser test checks the real UI)."""
    wf = json.loads(path.read_text())
    ds = wf["extra"]["ds"]
    notes = [n for n in wf["nodes"] if n["type"] in ("MarkdownNote", "Note")]
    assert notes, "every shipped workflow opens with a note"
    n = notes[0]
    sx = (n["pos"][0] + ds["offset"][0]) * ds["scale"]
    sy = (n["pos"][1] - 30 + ds["offset"][1]) * ds["scale"]
    assert 70 <= sx <= 400 and 90 <= sy <= 400, (sx, sy)
    assert 0.6 <= ds["scale"] <= 1.0


def _load_images(wf: dict) -> list[str]:
    return [n["widgets_values"][0] for n in wf["nodes"] if n["type"] in ("LoadImage", "LoadImageMask")]


def test_every_example_picture_is_shipped_and_generated_by_the_script():
    """Every picture a workflow loads is shipped in example_workflows/input/, none is unused,
    and each equals what scripts/make_example_images.py draws (pixels, alpha included)."""
    import importlib.util

    import numpy as np
    from PIL import Image

    shipped = {p.name for p in (ROOT / "example_workflows" / "input").glob("*.png")}
    named = {name for p in WORKFLOWS for name in _load_images(json.loads(p.read_text()))}
    assert named == shipped, f"named but not shipped: {named - shipped}; shipped but unused: {shipped - named}"
    spec = importlib.util.spec_from_file_location("make_example_images", ROOT / "scripts" / "make_example_images.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in shipped:
        with Image.open(ROOT / "example_workflows" / "input" / name) as im:
            assert np.array_equal(np.asarray(im), np.asarray(mod.IMAGES[name]())), f"{name} is stale: rerun the script"


def test_source_pictures_come_with_their_region_painted():
    """Load Image's MASK is the transparent part: the KV-Edit / SpotEdit / PIXELS sources
    have a non-empty, partial edit region so the templates run as they open."""
    import numpy as np
    from PIL import Image

    for name in ("precise_edit_cat_on_bench.png", "precise_edit_hills.png", "precise_edit_hills_region_2.png"):
        with Image.open(ROOT / "example_workflows" / "input" / name) as im:
            alpha = np.asarray(im)[..., 3]
        assert 0.02 < float((alpha < 128).mean()) < 0.5, name


def test_every_pack_node_is_in_a_shipped_workflow():
    """A node a user should learn appears in some example workflow (which the live-server and
    browser tests then run and load)."""
    import asyncio

    from precise_edit.nodes import PreciseEditExtension

    pack = {n.GET_SCHEMA().node_id for n in asyncio.run(PreciseEditExtension().get_node_list())}
    used = {n["type"] for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"]}
    missing = sorted(pack - used)
    assert not missing, f"pack nodes no example workflow uses: {missing}"

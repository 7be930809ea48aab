"""Live server: the pack loads into a real ComfyUI and every shipped workflow runs.

Starts the host ComfyUI (``COMFYUI_PATH``) headless with this pack and the tests-only
helper pack, converts each UI-format JSON in ``workflows/`` with ``/object_info``, swaps
weight loaders for tiny fixtures, queues it and checks its outputs.
"""
from __future__ import annotations

import json

import pytest

from conftest import COMFYUI_PATH, HELPERS_DIR, PACK_DIR
from harness.comfy_server import ComfyServer
from harness.fixtures_swap import provide_saved_records, shrink_resolution, swap_loaders, write_input_images
from harness.workflow_api import WorkflowError, output_node_ids, ui_to_api

WORKFLOWS = sorted((PACK_DIR / "workflows").glob("*.json"))


def _pack_nodes() -> set[str]:
    import asyncio

    from precise_edit.nodes import PreciseEditExtension

    return {n.GET_SCHEMA().node_id for n in asyncio.run(PreciseEditExtension().get_node_list())}


PACK_NODES = _pack_nodes()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ComfyServer(COMFYUI_PATH, PACK_DIR, HELPERS_DIR, tmp_path_factory.mktemp("comfy_base"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.object_info()


def test_no_pack_failed_to_import(server):
    failures = server.import_failures()
    assert not failures, "custom node packs failed to import:\n" + "\n".join(failures)
    assert "comfyui-precise-edit" in server.log()


def test_pack_nodes_registered_with_docs(object_info):
    missing = PACK_NODES - set(object_info)
    assert not missing, f"nodes missing from /object_info: {missing}"
    for name in PACK_NODES:
        info = object_info[name]
        assert info["category"].startswith("precise-edit")
        assert info["display_name"] and info["description"]
        for section in ("required", "optional"):
            for inp, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"


def test_example_workflows_in_template_browser(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates.get("comfyui-precise-edit", [])) == sorted(p.stem for p in WORKFLOWS)
    for p in WORKFLOWS:
        r = server.get(f"/api/workflow_templates/comfyui-precise-edit/{p.name}")
        assert r == json.loads(p.read_text())


def test_workflows_exist():
    assert WORKFLOWS, "no example workflows shipped"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs(server, object_info, path):
    workflow = json.loads(path.read_text())
    prompt = ui_to_api(workflow, object_info)  # fails on a node this ComfyUI does not have
    family = swap_loaders(prompt)
    shrink_resolution(prompt)
    assert family, f"{path.name}: no model loader to swap"
    write_input_images(prompt, server.base / "input")
    provide_saved_records(prompt, server.base / "output", server.base / "input")
    entry = server.run_prompt(prompt)
    outputs = entry.get("outputs", {})
    for nid in output_node_ids(prompt, object_info):
        assert outputs.get(nid), f"{path.name}: output node {nid} ({prompt[nid]['class_type']}) produced nothing"


def test_unknown_node_in_workflow_is_reported(object_info):
    wf = {"nodes": [{"id": 1, "type": "NoSuchNodeAnywhere", "inputs": [], "outputs": [], "widgets_values": []}],
          "links": []}
    with pytest.raises(WorkflowError, match="NoSuchNodeAnywhere"):
        ui_to_api(wf, object_info)

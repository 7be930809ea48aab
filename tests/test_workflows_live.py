"""Live server: the pack loads into a real ComfyUI and every shipped workflow runs.

Starts the host ComfyUI (``COMFYUI_PATH``) headless with this pack and the tests-only
helper pack, converts each UI-format JSON in ``example_workflows/`` with ``/object_info``, swaps
weight loaders for tiny fixtures, queues it and checks its outputs.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import COMFYUI_PATH, HELPERS_DIR, PACK_DIR
from harness.comfy_server import ComfyServer
from harness.fixtures_swap import (provide_saved_records, shrink_resolution, swap_loaders, write_input_images,
                                   write_tiny_lora)
from harness.workflow_api import WorkflowError, output_node_ids, ui_to_api

WORKFLOWS = sorted((PACK_DIR / "example_workflows").glob("*.json"))


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
        # the frontend's card thumbnail: <name>.jpg beside the JSON
        import requests

        thumb = requests.get(f"{server.url}/api/workflow_templates/comfyui-precise-edit/{p.stem}.jpg", timeout=30)
        assert thumb.ok and thumb.content[:2] == b"\xff\xd8", f"no thumbnail served for {p.stem}"


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


def _edit_latent(server, prompt: dict, prefix: str, sampler_type: str = "KVEditSampler", node_id=None):
    """Run ``prompt`` with a SaveLatent on the sampler's output (or on node ``node_id``'s); the saved latent."""
    import safetensors.torch

    sampler = node_id or next(nid for nid, n in prompt.items() if n["class_type"] == sampler_type)
    prompt = json.loads(json.dumps(prompt))
    prompt["lora_check_save"] = {"class_type": "SaveLatent",
                                 "inputs": {"samples": [sampler, 0], "filename_prefix": f"lora_check/{prefix}"}}
    server.run_prompt(prompt)
    saved = sorted((server.base / "output" / "lora_check").glob(f"{prefix}_*.latent"))
    assert saved, f"SaveLatent wrote nothing for {prefix}"
    return safetensors.torch.load_file(str(saved[-1]))["latent_tensor"]


LORA_CASES = {
    # KV-Edit: inversion and edit both use the LoRA model
    "kv_edit_flux_dev": ("KV-Edit - edit a masked region (FLUX.1-dev).json", "flux_dev", "KVEditSampler"),
    # SpotEdit on Qwen-Image-Edit: the Wan VAE fixture encodes to |x| ~ 1 as well
    "spot_edit_qwen": ("SpotEdit - fast instruction edit (Qwen-Image-Edit).json", "qwen_image", "KSampler"),
}


@pytest.mark.parametrize("case", sorted(LORA_CASES))
def test_lora_changes_the_edit(server, object_info, case):
    """A LoRA on the diffusion model must change an edit. With fixture VAEs that encoded to
    latents of ~4e7 (TAESD) or ~0.05 (Wan) it did not, or barely: the model's output was
    swamped by (or negligible next to) the latent, so weight-related regressions went unseen."""
    import tiny_models as tm

    name, fam, sampler_type = LORA_CASES[case]
    path = PACK_DIR / "example_workflows" / name
    prompt = ui_to_api(json.loads(path.read_text()), object_info)
    family = swap_loaders(prompt)
    assert family == fam
    shrink_resolution(prompt)
    write_input_images(prompt, server.base / "input")
    lora = f"pe_tiny_lora_{family}.safetensors"
    n_layers = write_tiny_lora(tm.FIXTURES[family].model(0), server.base / "models" / "loras" / lora)
    assert n_layers > 10
    encode = next(nid for nid, n in prompt.items() if n["class_type"] == "VAEEncode")
    source = _edit_latent(server, prompt, f"{case}_source", node_id=encode)
    scale = float(source.abs().mean())
    assert 0.2 < scale < 10, f"the fixture VAE should give latents of realistic scale (|x| ~ 1), got {scale:.3g}"
    plain = _edit_latent(server, prompt, f"{case}_plain", sampler_type)

    unet = next(nid for nid, n in prompt.items() if n["class_type"] == "PETestTinyModel")
    with_lora = json.loads(json.dumps(prompt))
    for node in with_lora.values():
        for inp, value in node["inputs"].items():
            if value == [unet, 0]:
                node["inputs"][inp] = ["lora_check_lora", 0]
    with_lora["lora_check_lora"] = {"class_type": "LoraLoaderModelOnly",
                                    "inputs": {"model": [unet, 0], "lora_name": lora, "strength_model": 1.0}}
    edited = _edit_latent(server, with_lora, f"{case}_lora", sampler_type)
    zero = json.loads(json.dumps(with_lora))
    zero["lora_check_lora"]["inputs"]["strength_model"] = 0.0
    unchanged = _edit_latent(server, zero, f"{case}_zero", sampler_type)
    assert torch.equal(unchanged, plain), "a LoRA at strength 0 must not change the edit"
    diff = (edited - plain).abs()
    print(f"{case} LoRA change: max {float(diff.max()):.4g}, latent max {float(plain.abs().max()):.4g}")
    assert float(diff.max()) > 1e-3 * float(plain.abs().max()), (
        f"the LoRA did not change the {case} result (max difference {float(diff.max()):.3g})")

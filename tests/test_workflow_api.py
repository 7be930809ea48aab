"""UI -> API workflow conversion (the frontend's graphToPrompt), on synthetic graphs."""
import pytest

from harness.workflow_api import WorkflowError, ui_to_api, widget_inputs

OBJECT_INFO = {
    "KSampler": {"input": {"required": {
        "model": ["MODEL", {}], "seed": ["INT", {"default": 0, "control_after_generate": True}],
        "steps": ["INT", {}], "cfg": ["FLOAT", {}], "sampler_name": [["euler", "dpmpp_2m"], {}],
        "scheduler": [["simple", "normal"], {}], "positive": ["CONDITIONING", {}],
        "negative": ["CONDITIONING", {}], "latent_image": ["LATENT", {}], "denoise": ["FLOAT", {}]}},
        "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                                     "negative", "latent_image", "denoise"]}, "output_node": False},
    "LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]}}, "output_node": False},
    "Model": {"input": {"required": {"name": [["m.safetensors"], {}]}}, "output_node": False},
    "Cond": {"input": {"required": {"text": ["STRING", {"multiline": True}], "model": ["MODEL", {}]},
                       "optional": {"strength": ["FLOAT", {"forceInput": True}]}}, "output_node": False},
    "Lora": {"input": {"required": {"model": ["MODEL", {}], "strength": ["FLOAT", {}]}}, "output_node": False},
    "Save": {"input": {"required": {"images": ["IMAGE", {}], "prefix": ["STRING", {}]}}, "output_node": True},
}


def node(nid, ntype, widgets=None, inputs=(), mode=0):
    return {"id": nid, "type": ntype, "mode": mode, "widgets_values": widgets if widgets is not None else [],
            "inputs": [{"name": n, "type": t, "link": lk} for n, t, lk in inputs], "outputs": []}


def test_widget_order_skips_links_and_force_input():
    assert [n for n, _ in widget_inputs(OBJECT_INFO["KSampler"])] == [
        "seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"]
    assert [n for n, _ in widget_inputs(OBJECT_INFO["Cond"])] == ["text"]


def test_seed_control_value_and_links():
    wf = {"nodes": [node(1, "Model", ["m.safetensors"]),
                    node(2, "KSampler", [42, "randomize", 20, 7.5, "euler", "simple", 0.8],
                         [("model", "MODEL", 1)])],
          "links": [[1, 1, 0, 2, 0, "MODEL"]]}
    api = ui_to_api(wf, OBJECT_INFO)
    assert api["2"]["inputs"] == {"seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                                  "scheduler": "simple", "denoise": 0.8, "model": ["1", 0]}
    assert api["1"]["inputs"] == {"name": "m.safetensors"}


def test_image_upload_widget_value_is_skipped():
    api = ui_to_api({"nodes": [node(3, "LoadImage", ["a.png", "image"])], "links": []}, OBJECT_INFO)
    assert api["3"]["inputs"] == {"image": "a.png"}


def test_reroute_bypass_mute_primitive_and_notes():
    wf = {"nodes": [
        node(1, "Model", ["m.safetensors"]),
        {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"name": "", "type": "MODEL", "links": [2]}]},
        {**node(3, "Lora", [0.5], [("model", "MODEL", 2)]), "mode": 4,
         "outputs": [{"name": "MODEL", "type": "MODEL", "links": [3]}]},
        node(4, "Cond", ["hello"], [("model", "MODEL", 3), ("strength", "FLOAT", 4)]),
        {"id": 5, "type": "PrimitiveNode", "mode": 0, "widgets_values": [0.25], "inputs": [],
         "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [4]}]},
        node(6, "Save", ["x"], [("images", "IMAGE", None)], mode=2),
        node(7, "MarkdownNote", ["# hi"]),
    ], "links": [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 1, "MODEL"],
                 [4, 5, 0, 4, 2, "FLOAT"]]}
    wf["nodes"][3]["inputs"].insert(0, {"name": "text", "type": "STRING", "link": None})
    api = ui_to_api(wf, OBJECT_INFO)
    assert set(api) == {"1", "4"}  # reroute, bypassed, primitive, muted and note nodes vanish
    assert api["4"]["inputs"] == {"text": "hello", "model": ["1", 0], "strength": 0.25}


def test_dict_widget_values():
    wf = {"nodes": [node(1, "Save", {"prefix": "out"}, [("images", "IMAGE", None)])], "links": []}
    assert ui_to_api(wf, OBJECT_INFO)["1"]["inputs"] == {"prefix": "out"}


def test_api_format_and_unknown_nodes_are_reported():
    with pytest.raises(WorkflowError, match="UI-format"):
        ui_to_api({"1": {"class_type": "Save", "inputs": {}}}, OBJECT_INFO)
    with pytest.raises(WorkflowError, match="'Nope'"):
        ui_to_api({"nodes": [node(1, "Nope")], "links": []}, OBJECT_INFO)


def test_widgets_added_by_newer_comfyui_take_their_default():
    info = {"Scale": {"input": {"required": {"image": ["IMAGE", {}], "megapixels": ["FLOAT", {"default": 1.0}],
                                             "steps": ["INT", {"default": 1}]}}, "output_node": False}}
    wf = {"nodes": [node(1, "Scale", [0.5])], "links": []}
    assert ui_to_api(wf, info)["1"]["inputs"] == {"megapixels": 0.5, "steps": 1}

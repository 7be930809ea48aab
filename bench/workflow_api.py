"""Convert a UI-format ComfyUI workflow (what the editor saves) to the API prompt format.

Mirrors what the ComfyUI frontend does when you press Queue (``graphToPrompt``), using the
server's ``/object_info`` to know which inputs are widgets and in which order their values
are stored:

* ``widgets_values`` (a list in widget order, or a dict by name) fill the widget inputs;
  INT/FLOAT widgets with "control after generate" (``seed``/``noise_seed`` or flagged in
  ``/object_info``) store one extra value, and image-upload combos one more;
* a widget the file has no value for (added by a newer ComfyUI) takes its default, as the
  editor does when it loads an older workflow;
* a linked input takes ``[source_id, slot]``; links are followed through ``Reroute`` nodes,
  bypassed nodes (mode 4: each output passes on the first input of the same type) and
  ``PrimitiveNode`` widgets (their value is inlined);
* muted nodes (mode 2) and frontend-only nodes (notes, reroutes, primitives) are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MODE_MUTED, MODE_BYPASS = 2, 4


class WorkflowError(ValueError):
    pass


@dataclass
class _Link:
    id: int
    src: int
    src_slot: int
    dst: int
    dst_slot: int
    type: str


def _is_widget(spec) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput") or opts.get("rawLink"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _extra_widget_values(name: str, spec) -> int:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    extra = 0
    if kind in ("INT", "FLOAT") and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
        extra += 1
    if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload") \
            or opts.get("animated_image_upload"):
        extra += 1
    if kind == "COMBO" and opts.get("control_after_generate"):
        extra += 1
    return extra


def _default(spec):
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    if isinstance(spec[0], list) and spec[0]:
        return spec[0][0]
    if spec[0] == "COMBO" and opts.get("options"):
        return opts["options"][0]
    return None


def widget_inputs(info: dict) -> list[tuple[str, list]]:
    """Widget inputs of a node class, in the order the editor stores their values."""
    out = []
    spec = info.get("input", {})
    order = info.get("input_order") or {s: list(spec.get(s, {})) for s in ("required", "optional")}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            s = spec.get(section, {}).get(name)
            if s is not None and _is_widget(s):
                out.append((name, s))
    return out


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    if "nodes" not in workflow or "links" not in workflow:
        raise WorkflowError("not a UI-format workflow (no 'nodes'/'links'); API-format files need no conversion")
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("subgraphs are not supported by this converter")
    nodes = {int(n["id"]): n for n in workflow["nodes"]}
    links = {}
    for entry in workflow["links"]:
        if isinstance(entry, dict):
            lk = _Link(entry["id"], entry["origin_id"], entry["origin_slot"], entry["target_id"],
                       entry["target_slot"], entry.get("type", "*"))
        else:
            lk = _Link(*entry[:6])
        links[int(lk.id)] = lk

    def resolve(link_id, seen=()):
        """(source node id, slot) feeding a link, or ('value', v) for a primitive, or None."""
        if link_id is None or link_id not in links or link_id in seen:
            return None
        lk = links[link_id]
        src = nodes.get(int(lk.src))
        if src is None:
            return None
        if src.get("mode") == MODE_MUTED:
            return None
        if src["type"] == "Reroute":
            ins = src.get("inputs") or []
            return resolve(ins[0].get("link"), seen + (link_id,)) if ins else None
        if src["type"] == "PrimitiveNode":
            vals = src.get("widgets_values") or []
            return ("value", vals[0]) if vals else None
        if src.get("mode") == MODE_BYPASS:
            out_type = (src.get("outputs") or [])[lk.src_slot].get("type") if src.get("outputs") else lk.type
            for inp in src.get("inputs") or []:
                if inp.get("link") is not None and (inp.get("type") == out_type or out_type == "*"):
                    return resolve(inp["link"], seen + (link_id,))
            return None
        return (str(src["id"]), int(lk.src_slot))

    prompt = {}
    for nid, node in sorted(nodes.items()):
        ctype = node["type"]
        if node.get("mode") in (MODE_MUTED, MODE_BYPASS) or ctype in FRONTEND_ONLY:
            continue
        info = object_info.get(ctype)
        if info is None:
            raise WorkflowError(f"node {nid} is of type '{ctype}', which this ComfyUI does not have "
                                f"(missing custom node pack or renamed node)")
        inputs = {}
        values = node.get("widgets_values")
        if isinstance(values, dict):
            for name, _spec in widget_inputs(info):
                if name in values:
                    inputs[name] = values[name]
        elif values:
            i = 0
            for name, spec in widget_inputs(info):
                if i >= len(values):
                    break
                inputs[name] = values[i]
                i += 1 + _extra_widget_values(name, spec)
        for name, spec in widget_inputs(info):
            # a widget the saved workflow predates (newer ComfyUI added an input): the editor
            # gives it its default when loading, so do the same
            if name not in inputs and name in info.get("input", {}).get("required", {}):
                default = _default(spec)
                if default is not None:
                    inputs[name] = default
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            src = resolve(inp["link"])
            if src is None:
                continue
            inputs[inp["name"]] = src[1] if src[0] == "value" else [src[0], src[1]]
        prompt[str(nid)] = {"class_type": ctype, "inputs": inputs,
                            "_meta": {"title": node.get("title") or ctype}}
    return prompt


def output_node_ids(prompt: dict, object_info: dict) -> list[str]:
    return [nid for nid, n in prompt.items() if object_info.get(n["class_type"], {}).get("output_node")]

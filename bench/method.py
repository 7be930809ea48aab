"""One method of a run: a workflow (API format, or UI format converted with the server's
object_info) whose inputs are bound per case, plus the EditMetrics node the runner adds.

Bindings name a node by title or id, and optionally its input: ``image=Load Image``,
``target_prompt=Target prompt (the edit).text``, ``seed=3.noise_seed``. Roles:

=================  =============================================================================
``image``          a LoadImage node: gets the case's source, its alpha carrying the mask (default:
                   the only LoadImage)
``mask``           a LoadImageMask node for the mask (default: the ``image`` node's alpha)
``source_prompt``  a text input (default input ``text``) set to the original prompt
``target_prompt``  a text input set to the editing prompt
``instruction``    a text input set to the editing instruction
``seed``           an INT input (default ``seed`` or ``noise_seed``) set to the run's seed
``output``         the node whose ``images`` input is the edit (default: the only SaveImage)
=================  =============================================================================
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .client import ComfyClient, ServerError
from .workflow_api import WorkflowError, ui_to_api

ROLES = ("image", "mask", "source_prompt", "target_prompt", "instruction", "seed", "output")
DEFAULT_INPUT = {"image": "image", "mask": "image", "source_prompt": "text", "target_prompt": "text",
                 "instruction": "text", "output": "images"}
METRICS_ID = "pe_bench_metrics"


class BindingError(ValueError):
    """A workflow lacks what the bindings need (raised before the run starts)."""


@dataclass
class MetricSettings:
    mask_convention: str = "pie-bench border"
    lpips_net: str = "squeeze"
    dino_model: str = "dino_vitbase8_pretrain.pth"
    clip_vision: str = ""     # a file in models/clip_vision; empty = no CLIP similarity
    clip_text: str = ""       # a CLIP-L file in models/text_encoders
    enabled: bool = True


@dataclass
class Method:
    name: str
    prompt: dict                      # API-format template
    bindings: dict = field(default_factory=dict)   # role -> (node id, input)
    seed: int = 0

    def fingerprint(self, metrics: MetricSettings) -> str:
        blob = json.dumps({"prompt": self.prompt, "bindings": self.bindings, "seed": self.seed,
                           "metrics": metrics.__dict__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def load_workflow(path: Path, object_info: dict | None) -> dict:
    data = json.loads(Path(path).read_text())
    if "nodes" in data and "links" in data:
        if object_info is None:
            raise WorkflowError(f"{path}: a UI-format workflow needs a server to convert it")
        return ui_to_api(data, object_info)
    if not data or not all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise WorkflowError(f"{path}: neither a UI-format nor an API-format ComfyUI workflow")
    return data


def _find_node(prompt: dict, ref: str) -> str | None:
    if ref in prompt:
        return ref
    hits = [nid for nid, n in prompt.items() if n.get("_meta", {}).get("title") == ref]
    return hits[0] if len(hits) == 1 else None


def resolve_bindings(name: str, prompt: dict, specs: dict, seed_given: bool) -> dict:
    """role -> (node id, input name); raises :class:`BindingError` naming everything missing."""
    out, problems = {}, []

    def only(types):
        hits = [nid for nid, n in prompt.items() if n["class_type"] in types]
        return hits[0] if len(hits) == 1 else None

    for role in ROLES:
        spec = specs.get(role)
        if spec is None:
            if role == "image":
                nid = only({"LoadImage"})
                if nid is None:
                    problems.append("no single LoadImage node: bind 'image=<title or id>'")
                    continue
                out[role] = (nid, "image")
            elif role == "output":
                nid = only({"SaveImage"})
                if nid is None:
                    problems.append("no single SaveImage node: bind 'output=<title or id>'")
                    continue
                out[role] = (nid, "images")
            elif role == "seed" and seed_given:
                nids = [(nid, k) for nid, n in prompt.items() for k in ("seed", "noise_seed") if k in n["inputs"]
                        and not isinstance(n["inputs"][k], list)]
                if len(nids) != 1:
                    problems.append("--seed given but no single seed input: bind 'seed=<title or id>.<input>'")
                else:
                    out[role] = nids[0]
            continue
        ref, inp = spec, ""
        nid = _find_node(prompt, ref)
        if nid is None and "." in spec:
            ref, _, inp = spec.rpartition(".")
            nid = _find_node(prompt, ref)
        if nid is None:
            problems.append(f"{role}: no node titled or numbered '{ref}' (or the title is not unique)")
            continue
        inp = inp or DEFAULT_INPUT.get(role) or next((k for k in ("seed", "noise_seed") if k in prompt[nid]["inputs"]), "")
        if inp not in prompt[nid]["inputs"]:
            problems.append(f"{role}: node {nid} ({prompt[nid]['class_type']}) has no input '{inp}'")
            continue
        if role != "output" and isinstance(prompt[nid]["inputs"][inp], list):
            problems.append(f"{role}: input '{inp}' of node {nid} is linked, not a value the runner can set")
            continue
        out[role] = (nid, inp)
    if "output" in out and not isinstance(prompt[out["output"][0]]["inputs"].get(out["output"][1]), list):
        problems.append(f"output: node {out['output'][0]} has no linked '{out['output'][1]}' input to measure")
    if "image" in out and prompt[out["image"][0]]["class_type"] != "LoadImage":
        problems.append(f"image: node {out['image'][0]} is a {prompt[out['image'][0]]['class_type']}, not a LoadImage")
    if problems:
        raise BindingError(f"workflow '{name}': " + "; ".join(problems))
    return out


def case_prompt(method: Method, case: dict, image_name: str, mask_name: str | None,
                metrics: MetricSettings) -> dict:
    """The API prompt for one case: bound inputs set, EditMetrics wired to the edit."""
    p = copy.deepcopy(method.prompt)
    b = method.bindings
    p[b["image"][0]]["inputs"][b["image"][1]] = image_name
    if "mask" in b and mask_name:
        p[b["mask"][0]]["inputs"][b["mask"][1]] = mask_name
        if p[b["mask"][0]]["class_type"] == "LoadImageMask":
            p[b["mask"][0]]["inputs"]["channel"] = "red"
    for role, key in (("source_prompt", "original_prompt"), ("target_prompt", "editing_prompt"),
                      ("instruction", "editing_instruction")):
        if role in b:
            p[b[role][0]]["inputs"][b[role][1]] = case[key]
    if "seed" in b:
        p[b["seed"][0]]["inputs"][b["seed"][1]] = method.seed
    if metrics.enabled:
        src = b["image"][0]
        mask_src = [b["mask"][0], 0] if "mask" in b and p[b["mask"][0]]["class_type"] == "LoadImageMask" else [src, 1]
        node = {"class_type": "EditMetrics", "_meta": {"title": "EditMetrics (runner)"},
                "inputs": {"source": [src, 0], "edited": p[b["output"][0]]["inputs"][b["output"][1]],
                           "mask": mask_src, "mask_convention": metrics.mask_convention,
                           "target_text": case["editing_prompt"], "source_text": case["original_prompt"],
                           "lpips_net": metrics.lpips_net, "dino_model": metrics.dino_model}}
        if metrics.clip_vision and metrics.clip_text:
            p["pe_bench_clip_vision"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": metrics.clip_vision}}
            p["pe_bench_clip"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": metrics.clip_text,
                                                                         "type": "stable_diffusion"}}
            node["inputs"].update(clip_vision=["pe_bench_clip_vision", 0], clip=["pe_bench_clip", 0])
        p[METRICS_ID] = node
    return p


def execute_case(url: str, method: Method, case: dict, image_png: bytes, mask_png: bytes | None,
                 metrics: MetricSettings) -> dict:
    """Run one case on one server. Returns a record (``status`` ok/failed) and the edit's PNG
    bytes under ``files``. Server trouble raises :class:`ServerError` (a retry may help)."""
    client = ComfyClient(url)
    t0 = time.perf_counter()
    tag = f"pe_bench_{method.name}_{case['case_id']}".replace("/", "_").replace(" ", "_")
    image_name = client.upload(tag + ".png", image_png)
    mask_name = client.upload(tag + "_mask.png", mask_png) if mask_png is not None else None
    outputs = client.run(case_prompt(method, case, image_name, mask_name, metrics))
    seconds = time.perf_counter() - t0
    files = {}
    out_id = method.bindings["output"][0]
    refs = outputs.get(out_id, {}).get("images", [])
    for i, ref in enumerate(refs):
        files[f"edited_{i}.png" if i else "edited.png"] = client.image(ref)
    record = {"seconds": seconds, "finished_at": time.time(), "server": url, "status": "ok", "error": ""}
    if metrics.enabled:
        rows = json.loads(outputs.get(METRICS_ID, {}).get("edit_metrics", ["[]"])[0])
        if not rows:
            raise ServerError(f"EditMetrics gave no numbers on {url}")
        row = rows[0]
        record.update(row["metrics"])
        record["mask_convention"] = row["mask_convention"]
        record["notes"] = " | ".join(row["notes"])
        if len(rows) > 1:
            record["notes"] = (record["notes"] + f" | batch of {len(rows)}: first image measured").strip(" |")
    if not refs:
        record.update(status="failed", error=f"the output node {out_id} produced no image")
    return {"record": record, "files": files}

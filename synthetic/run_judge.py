"""Judge a data-set runner's output (``scripts/edit_bench.py --out DIR``) on the synthetic set.

The runner writes one row per case and method (``results.csv``, ``edited_image`` relative to the
output folder); the synthetic set's ``mapping_file.json`` holds what each edit must do. Every
edited image is judged by ``synthetic.judge`` (the edit done, the other objects kept) and the
rates are given per method and edit kind.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from . import judge
from .evaluate import CFG   # the FLUX-side models are sampled with classifier-free guidance
from .piebench import pair_from_entry
from .scenes import FLUX_SIZE as SIZE   # the Kontext-style model's image size (evaluate.KONTEXT_SIZE)


def judge_run(out: str | Path, mapping_file: str | Path, others_kept: bool = True) -> dict[str, dict[str, float]]:
    """{method: {edit kind | "all": success rate}}; cases the runner failed count as failures. Success is
    the edit done and the other objects kept; ``others_kept=False``: the edit done alone (the plain models'
    own rate in the README's tables)."""
    from PIL import Image

    out, mapping = Path(out), json.loads(Path(mapping_file).read_text())
    verdicts: dict[str, list[tuple[str, bool]]] = {}
    with open(out / "results.csv", newline="") as f:
        for row in csv.DictReader(f):
            e = mapping[row["case_id"]]
            pair = pair_from_entry(e)
            ok = False
            if row["status"] == "ok" and row.get("edited_image"):
                img = np.asarray(Image.open(out / row["edited_image"]).convert("RGB"))
                if img.shape[:2] != tuple(e["image_size"]):
                    raise ValueError(f"case {row['case_id']}: edited image is {img.shape[1]}x{img.shape[0]}, the set's "
                                     f"images are {e['image_size'][0]}x{e['image_size'][1]}")
                ok = judge.edit_ok(img, pair) and (not others_kept or judge.others_kept(img, pair))
            verdicts.setdefault(row["method"], []).append((pair.kind, bool(ok)))
    rates = {}
    for method, v in verdicts.items():
        kinds = sorted({k for k, _ in v})
        rates[method] = {k: float(np.mean([ok for kk, ok in v if kk == k])) for k in kinds}
        rates[method]["all"] = float(np.mean([ok for _, ok in v]))
        rates[method]["n"] = len(v)
    return rates


def kontext_workflow(steps: int = 12, guidance: float = 2.5, size: int = SIZE, cfg: float = CFG) -> dict:
    """The plain Kontext-style edit as an API-format workflow of ComfyUI's own nodes plus the tests
    pack's synthetic model: the runner binds the source image (LoadImage), the instruction (the
    node titled "Instruction"), the seed and the output (SaveImage). Classifier-free guidance ``cfg``
    against the empty instruction with the same reference (as ``evaluate.edit_kontext``)."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "Source"}},
        "2": {"class_type": "PETestSyntheticModel", "inputs": {"model": "kontext"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 1]}, "_meta": {"title": "Instruction"}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 2]}},
        "5": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["3", 0], "latent": ["4", 0]}},
        "6": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["5", 0], "guidance": guidance}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 1]}},
        "8": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["7", 0], "latent": ["4", 0]}},
        "13": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["8", 0], "guidance": guidance}},
        "9": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "10": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 0, "steps": steps, "cfg": cfg,
                                                    "sampler_name": "euler", "scheduler": "simple", "positive": ["6", 0],
                                                    "negative": ["13", 0], "latent_image": ["9", 0], "denoise": 1.0},
               "_meta": {"title": "Sampler"}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["2", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "synthetic"}},
    }


RUNNER_BINDS = ["--bind", "instruction=Instruction", "--bind", "seed=Sampler.seed"]

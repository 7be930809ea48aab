"""Swap a prompt's weight loaders for the tests-only tiny fixtures, and provide its images.

A workflow names real files (``flux1-dev.safetensors``, ``ae.safetensors``, ...). The
model family is read from the diffusion model's file name, once per workflow, and every
loader of that workflow (UNet/checkpoint, text encoders, VAE) becomes the matching tiny
fixture. ``LoadImage`` stays as it is: the images it names are written into the server's
input folder (an RGBA picture whose transparent square becomes the MASK).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MODEL_LOADERS = {"UNETLoader", "CheckpointLoaderSimple", "CheckpointLoader", "UnetLoaderGGUF",
                 "ImageOnlyCheckpointLoader"}
CLIP_LOADERS = {"CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "QuadrupleCLIPLoader", "CLIPLoaderGGUF",
                "DualCLIPLoaderGGUF"}
VAE_LOADERS = {"VAELoader"}


def family_from_name(name: str) -> str:
    n = name.lower()
    if "qwen" in n:
        return "qwen_image"
    if "pix2pix" in n:
        return "sd15_ip2p"
    if "kontext" in n:
        return "flux_kontext"
    if "schnell" in n:
        return "flux_schnell"
    if "flux" in n:
        return "flux_dev"
    if "xl" in n:
        return "sdxl"
    return "sd15"


def swap_loaders(prompt: dict) -> str:
    """Rewrite ``prompt`` in place; returns the fixture family used."""
    names = [n["inputs"].get("unet_name") or n["inputs"].get("ckpt_name") or ""
             for n in prompt.values() if n["class_type"] in MODEL_LOADERS]
    if not names:
        return ""
    family = family_from_name(names[0])
    for node in prompt.values():
        ct = node["class_type"]
        if ct in {"CheckpointLoaderSimple", "CheckpointLoader", "ImageOnlyCheckpointLoader"}:
            node.update(class_type="PETestTinyCheckpoint", inputs={"family": family})
        elif ct in MODEL_LOADERS:
            node.update(class_type="PETestTinyModel", inputs={"family": family, "seed": 0})
        elif ct in CLIP_LOADERS:
            node.update(class_type="PETestTinyCLIP", inputs={"family": family})
        elif ct in VAE_LOADERS:
            node.update(class_type="PETestTinyVAE", inputs={"family": family})
    return family


def write_input_images(prompt: dict, input_dir: Path, size=(96, 64)) -> list[str]:
    """Write a small picture for every image a ``LoadImage`` node names (over the pack's own
    example of that name); returns the file names."""
    input_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for node in prompt.values():
        if node["class_type"] not in ("LoadImage", "LoadImageMask"):
            continue
        name = node["inputs"].get("image")
        if not name or name in written:
            continue
        # Replaces the pack's own example picture of that name (copied in on start): tiny
        # fixture models run at this small size.
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 7.0) * np.cos(yy / 5.0)], -1)
        alpha = np.ones((h, w))
        alpha[h // 4: h // 2, w // 3: w // 3 + w // 4] = 0.0  # transparent = masked (edit) region
        rgba = (np.concatenate([rgb, alpha[..., None]], -1) * 255).round().astype(np.uint8)
        path = input_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgba, "RGBA").save(path)
        written.append(name)
    return written


def provide_saved_records(prompt: dict, output_dir: Path, input_dir: Path) -> list[str]:
    """Give every ``LoadBackgroundKV`` the record its workflow names: the newest record an
    earlier workflow saved (``BackgroundKVCache`` writes to ``output/kv_cache``), copied into
    the input folder, as a user would do."""
    import shutil

    provided = []
    for node in prompt.values():
        if node["class_type"] != "LoadBackgroundKV":
            continue
        name = node["inputs"]["file"]
        if (input_dir / name).exists():
            continue
        saved = sorted(output_dir.rglob("*.bgkv.safetensors"), key=lambda p: p.stat().st_mtime)
        if not saved:
            raise RuntimeError(f"no saved background record to provide as {name}: run the workflow that "
                               f"saves one (BackgroundKVCache) first")
        (input_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(saved[-1], input_dir / name)
        provided.append(name)
    return provided


def shrink_resolution(prompt: dict, megapixels: float = 0.01) -> None:
    """Keep CI images tiny: nodes that scale images up to about one megapixel for real models
    (FluxKontextImageScale, ImageScaleToTotalPixels) keep the test image's own size. The
    graph's wiring is untouched."""
    for node in prompt.values():
        if node["class_type"] == "FluxKontextImageScale":
            node.update(class_type="ImageScaleBy",
                        inputs={"image": node["inputs"]["image"], "upscale_method": "nearest-exact", "scale_by": 1.0})
        elif node["class_type"] == "ImageScaleToTotalPixels":
            node["inputs"]["megapixels"] = megapixels


def write_tiny_lora(model_patcher, path: Path, seed: int = 0, rank: int = 4, rel: float = 0.5) -> int:
    """Write a LoRA file for a fixture model: every 2-D weight of the diffusion model gets a
    seeded rank-``rank`` update of about ``rel`` times that weight's own size (ComfyUI's
    generic key format ``diffusion_model.<layer>.lora_up/lora_down.weight``). Returns the
    number of layers patched."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in model_patcher.model.state_dict().items():
        if not (key.startswith("diffusion_model.") and key.endswith(".weight") and w.ndim == 2):
            continue
        layer = key[:-len(".weight")]
        up = torch.randn(w.shape[0], rank, generator=gen)
        down = torch.randn(rank, w.shape[1], generator=gen)
        delta_rms = float((up @ down).pow(2).mean().sqrt())
        scale = rel * float(w.float().pow(2).mean().sqrt()) / max(delta_rms, 1e-12)
        out[f"{layer}.lora_up.weight"] = (up * scale).contiguous()
        out[f"{layer}.lora_down.weight"] = down.contiguous()
        out[f"{layer}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    return len(out) // 3

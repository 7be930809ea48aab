"""Sample the synthetic SD-type UNets through ComfyUI and judge them; issue 12's spatial measure.

``generate_sd``: text-to-image with the SD1.5-class model. ``edit_ip2p``: the InstructPix2Pix-style
model given the source the way ComfyUI's ``InstructPix2PixConditioning`` gives it
(``concat_latent_image``, the raw VAE latent), text classifier-free guidance, and optionally a
region MASK as the latent's noise mask (ComfyUI's denoise-mask mechanism: outside the region the
source latent is kept). ``spatial_rates``: spatial edits ("add ... at the <place>") judged plain
vs through the pack's Spatial Instruction (its region as the noise mask, its instruction without
the place phrase, or the whole instruction).
"""
from __future__ import annotations

import numpy as np
import torch

from . import judge, scenes
from .evaluate import sample, to_image, to_latent
from .models import conditioning


def empty_latent(n: int = 1) -> torch.Tensor:
    return torch.zeros(n, 4, scenes.SIZE // 8, scenes.SIZE // 8)


def generate_sd(model, vae, caption: str, seed: int, steps: int = 20, cfg: float = 3.0) -> np.ndarray:
    return to_image(vae, sample(model, conditioning(caption), conditioning(""), empty_latent(), seed, steps, cfg))[0]


def edit_ip2p(model, vae, source: np.ndarray, instruction: str, seed: int, steps: int = 20, cfg: float = 3.0,
              region: torch.Tensor | None = None) -> np.ndarray:
    import comfy.sample

    src = to_latent(vae, source[None])
    pos = conditioning(instruction, concat_latent_image=src)
    neg = conditioning("", concat_latent_image=src)
    latent = empty_latent() if region is None else src
    noise = comfy.sample.prepare_noise(latent, seed)
    mask = None if region is None else region.reshape(1, 1, *region.shape[-2:]).float()
    out = comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", pos, neg, latent, noise_mask=mask,
                              disable_pbar=True, seed=seed)
    return to_image(vae, out)[0]


def spatial_region(instruction: str, feather: int = 4):
    """Spatial Instruction's region (1, H, W) and instruction without the place phrase."""
    from precise_edit.nodes.instruct.nodes import spatial_instruction

    region, stripped, *_ = spatial_instruction(instruction, "en", scenes.SIZE, scenes.SIZE, feather)
    return region, stripped


def spatial_rates(model, vae, n: int = 20, seed: int = 1200, steps: int = 20, cfg: float = 3.0) -> dict:
    """Success of "add a <colour> <shape> at the <place>" edits (the judge: the object in the
    named cell, every other object kept) plain and with Spatial Instruction."""
    pairs = scenes.edits(seed, n, kinds=("add",))
    res = {"plain": [], "region+stripped": [], "region+full": []}
    for i, p in enumerate(pairs):
        src = scenes.render(p.source)[0]
        region, stripped = spatial_region(p.instruction)
        for key, img in (("plain", edit_ip2p(model, vae, src, p.instruction, i, steps, cfg)),
                         ("region+stripped", edit_ip2p(model, vae, src, stripped, i, steps, cfg, region)),
                         ("region+full", edit_ip2p(model, vae, src, p.instruction, i, steps, cfg, region))):
            res[key].append(bool(judge.edit_ok(img, p) and judge.others_kept(img, p)))
    return {k: float(np.mean(v)) for k, v in res.items()}


def ip2p_rates(model, vae, n: int = 20, seed: int = 1001, steps: int = 20, cfg: float = 3.0) -> dict:
    """The plain editing model's own success per edit kind (held-out seed)."""
    pairs = scenes.edits(seed, n)
    res = [(p.kind, judge.edit_ok(edit_ip2p(model, vae, scenes.render(p.source)[0], p.instruction, i, steps, cfg), p))
           for i, p in enumerate(pairs)]
    out = {k: float(np.mean([ok for kind, ok in res if kind == k])) for k in scenes.EDIT_KINDS
           if any(kind == k for kind, _ in res)}
    out["all"] = float(np.mean([ok for _, ok in res]))
    return out

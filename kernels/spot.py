"""SpotEdit math (``shared/methods/spot-edit.md``): which tokens have settled on the
source, and what settled tokens contribute. Pure torch.

Token grids are ``[B, th, tw]`` (row-major, like the models' sequences); latents are
``[B, C, h, w]`` or ``[B, C, T, h, w]`` (Qwen-Image) and are patchified ``p x p``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

JUDGES = ("perceptual", "L4", "cosine")
MASK_MODES = ("replace", "union", "intersect")
SCHEDULES = ("cos2", "static")


def as_4d(latent: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, h, w]`` with ``T == 1`` -> ``[B, C, h, w]``; 4-D passes through."""
    if latent.ndim == 5:
        if latent.shape[2] != 1:
            raise ValueError(f"only single-frame 5-D latents are supported, got {tuple(latent.shape)}")
        return latent[:, :, 0]
    return latent


def pool_to_tokens(score_map: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, h, w]`` latent-resolution scores -> mean per ``p x p`` token ``[B, th, tw]``
    (edges padded by replication, as the models pad latents)."""
    h, w = score_map.shape[-2:]
    ph, pw = (-h) % patch, (-w) % patch
    m = score_map.unsqueeze(1)
    if ph or pw:
        m = F.pad(m, (0, pw, 0, ph), mode="replicate")
    return F.avg_pool2d(m, patch)[:, 0]


def scores_l4(x0: torch.Tensor, ref: torch.Tensor, patch: int) -> torch.Tensor:
    d = (as_4d(x0).float() - as_4d(ref).float()).abs().pow(4).mean(dim=1)
    return pool_to_tokens(d, patch)


def scores_cosine(x0: torch.Tensor, ref: torch.Tensor, patch: int) -> torch.Tensor:
    a, b = as_4d(x0).float(), as_4d(ref).float()
    h, w = a.shape[-2:]
    ph, pw = (-h) % patch, (-w) % patch
    if ph or pw:
        a = F.pad(a, (0, pw, 0, ph), mode="replicate")
        b = F.pad(b, (0, pw, 0, ph), mode="replicate")
    ta = F.unfold(a, patch, stride=patch)  # [B, C*p*p, tokens]
    tb = F.unfold(b, patch, stride=patch)
    cos = F.cosine_similarity(ta, tb, dim=1, eps=1e-8)
    th, tw = a.shape[-2] // patch, a.shape[-1] // patch
    return (1 - cos).reshape(-1, th, tw)


def scores_from_features(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor], latent_hw: tuple[int, int],
                         patch: int) -> torch.Tensor:
    """Perceptual distance from paired decoder features ``[B, C, H, W]``: per layer,
    channel-normalised squared L2 difference, resized to latent resolution; layers averaged
    with equal weight; then averaged per token. Identical inputs score exactly 0."""
    total = None
    for fa, fb in zip(feats_a, feats_b):
        na = fa.float() / (fa.float().norm(dim=1, keepdim=True) + 1e-10)
        nb = fb.float() / (fb.float().norm(dim=1, keepdim=True) + 1e-10)
        d = (na - nb).pow(2).sum(dim=1, keepdim=True)
        d = F.interpolate(d, size=latent_hw, mode="area" if d.shape[-1] >= latent_hw[1] else "bilinear")
        total = d if total is None else total + d
    return pool_to_tokens(total[:, 0] / len(feats_a), patch)


def dilate(active: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return active
    k = 2 * radius + 1
    return F.max_pool2d(active.float().unsqueeze(1), k, stride=1, padding=radius)[:, 0] > 0


def select_active(scores: torch.Tensor, tau: float, dilation: int = 0, user_mask: torch.Tensor | None = None,
                  mode: str = "union") -> tuple[torch.Tensor, float]:
    """Active (to compute) tokens ``[B, th, tw]``: score > tau, dilated, combined with a
    user token mask (``replace`` / ``union`` / ``intersect``). Never every token settled:
    tau is halved until some token is active. Returns (active, tau used)."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}")
    if user_mask is not None and mode == "replace":
        active = user_mask.bool().clone()
        if active.any():
            return active, tau
    t = float(tau)
    for _ in range(64):
        active = dilate(scores > t, dilation)
        if user_mask is not None and mode == "union":
            active = active | user_mask.bool()
        elif user_mask is not None and mode == "intersect":
            active = active & user_mask.bool()
        if active.any() or t == 0.0:
            break
        t = t / 2 if t > 1e-12 else 0.0
    if not active.any():  # identical images and an empty intersection: keep the top token
        flat = scores.reshape(scores.shape[0], -1)
        active = torch.zeros_like(flat, dtype=torch.bool)
        active.scatter_(1, flat.argmax(dim=1, keepdim=True), True)
        active = active.reshape(scores.shape)
    return active, t


def fusion_weight(sigma: float, schedule: str = "cos2") -> float:
    """Weight of the cached image features for settled tokens: ``cos^2(pi s / 2)`` (paper;
    mostly the reference early, mostly the cache late) or 1 (static cache)."""
    if schedule == "static":
        return 1.0
    if schedule != "cos2":
        raise ValueError(f"schedule must be one of {SCHEDULES}")
    return math.cos(math.pi * float(sigma) / 2) ** 2


def fuse(cached: torch.Tensor, reference: torch.Tensor, a: float) -> torch.Tensor:
    return cached if a == 1.0 else a * cached + (1 - a) * reference


def settled_velocity(x: torch.Tensor, ref: torch.Tensor, sigma: float) -> torch.Tensor:
    """Velocity whose clean estimate ``x - s v`` is exactly the reference."""
    return (x - ref) / sigma


def is_full_step(step: int, warmup: int, reset_every: int) -> bool:
    """Full steps: the first ``warmup`` steps, then every ``reset_every`` steps after them
    (warmup 4, reset 9: steps 0-3, 13, 22, 31, ... as the authors use on 50 steps)."""
    if step < warmup:
        return True
    return reset_every > 0 and step > warmup and (step - warmup) % reset_every == 0

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
# The authors' full steps on 50 steps: 0-3 (warm-up) and 13, 22, 31 (resets).
AUTHORS_STEPS = 50
AUTHORS_WARMUP = 4
AUTHORS_RESETS = (13, 22, 31)


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
    """Perceptual distance from paired decoder features ``[B, C, H, W]`` (or ``[B, C, T, H, W]``:
    averaged over T), as the authors compute it: per layer, channel-normalised squared L2
    difference, resized bilinearly to latent resolution; layers averaged with equal weight;
    then averaged per token. Identical inputs score exactly 0."""
    total = None
    for fa, fb in zip(feats_a, feats_b):
        d = (F.normalize(fa.float(), dim=1) - F.normalize(fb.float(), dim=1)).pow(2).sum(dim=1, keepdim=True)
        frames = 1
        if d.ndim == 5:  # [B, 1, T, H, W]: resize every frame (trilinear at fixed T), mean over T later
            frames = d.shape[2]
            d = d.transpose(1, 2).flatten(0, 1)
        if tuple(d.shape[-2:]) != tuple(latent_hw):
            d = F.interpolate(d, size=latent_hw, mode="bilinear", align_corners=False)
        if frames > 1:
            d = d.reshape(-1, frames, *d.shape[1:]).transpose(1, 2)
        total = d if total is None else total + d
    total = total / len(feats_a)
    if total.ndim == 5:
        total = total.mean(dim=2)
    return pool_to_tokens(total[:, 0], patch)


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
    """``a * cached + (1 - a) * reference`` (one kernel: ``lerp``)."""
    return cached if a == 1.0 else torch.lerp(reference, cached, a)


def authors_fusion_weight(sigma: float) -> float:
    """The weight of the cached image features in the authors' released code:
    ``cos^2(pi/2 * t / 1000)`` with ``t`` already the sigma in [0, 1] (the time divided by
    1000 twice), i.e. 1 - O(1e-6): practically a static cache."""
    return math.cos(0.5 * math.pi * (float(sigma) / 1000)) ** 2


def rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Apply rotary embeddings given as 2x2 matrices ``rot [..., n, D/2, 2, 2]`` to
    ``x [..., n, D]`` (pairs of channels, as FLUX / Qwen-Image rotate them)."""
    xp = x.to(rot.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = rot[..., 0] * xp[..., 0] + rot[..., 1] * xp[..., 1]
    return out.reshape(*x.shape).type_as(x)


def rotation_between(rot_to: torch.Tensor, rot_from: torch.Tensor) -> torch.Tensor:
    """The rotation that takes a key rotated by ``rot_from`` to the same key rotated by
    ``rot_to``: ``R_to @ R_from^T`` (rotations are orthogonal)."""
    return rot_to @ rot_from.transpose(-1, -2)


def fuse_key(cached_k: torch.Tensor, ref_k: torch.Tensor, ref_to_img: torch.Tensor | None, a: float) -> torch.Tensor:
    """SpotFusion of keys recorded after RoPE: blend the settled token's cached key (already at
    the image position) with the reference token's key moved to the image position (rotated
    by ``ref_to_img``). Equal to blending the un-rotated keys and rotating the blend at the
    image position, as the authors do. A selective step calls :func:`fuse_key_scaled` with the
    rotation scaled once per step; this is the same computation for one call."""
    if a == 1.0:
        return cached_k
    if ref_to_img is None:
        return fuse(cached_k, ref_k, a)
    return fuse_key_scaled(cached_k, ref_k, scaled_rotation(ref_to_img, a), a)


def scaled_rotation(ref_to_img: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 - a) * ref_to_img`` split into its two columns, once per step for every block:
    what :func:`fuse_key_scaled` multiplies the reference keys with."""
    s = (1 - a) * ref_to_img.float()
    return s[..., 0].contiguous(), s[..., 1].contiguous()


def fuse_key_scaled(cached_k: torch.Tensor, ref_k: torch.Tensor, scaled: tuple[torch.Tensor, torch.Tensor],
                    a: float) -> torch.Tensor:
    """:func:`fuse_key` with the rotation pre-scaled by ``1 - a`` (:func:`scaled_rotation`):
    ``a * cached_k + (1 - a) * R ref_k`` in float32, rounded once to the keys' dtype; four
    kernels per call instead of eight (the per-block cost of a selective step on a GPU)."""
    c0, c1 = scaled
    xp = ref_k.float().view(*ref_k.shape[:-1], -1, 1, 2)
    out = torch.addcmul(c0 * xp[..., 0], c1, xp[..., 1])
    return out.view(cached_k.shape).add_(cached_k, alpha=a).to(cached_k.dtype)


def authors_full_steps(steps: int) -> tuple[int, frozenset]:
    """The authors' full-step list (steps 0-3 and 13, 22, 31 of 50), scaled to ``steps`` by
    the fraction of the run: warm-up ``max(1, round(4 n / 50))`` steps and resets at
    ``round(r n / 50)`` for r in 13, 22, 31. At 50 steps this is exactly their list."""
    n = int(steps)
    warm = max(1, round(AUTHORS_WARMUP * n / AUTHORS_STEPS))
    resets = frozenset(round(r * n / AUTHORS_STEPS) for r in AUTHORS_RESETS) if n != AUTHORS_STEPS \
        else frozenset(AUTHORS_RESETS)
    return warm, frozenset(r for r in resets if warm <= r < n)


def authors_reuse(scores: torch.Tensor, tau: float, judge: str) -> torch.Tensor:
    """The authors' decision per token (True = reuse): score < tau for the perceptual and L4
    judges; for cosine their ``tau`` is a similarity and a token is reused when it is above."""
    if judge == "cosine":
        return scores > tau
    return scores < tau


def settled_velocity(x: torch.Tensor, ref: torch.Tensor, sigma: float) -> torch.Tensor:
    """Velocity whose clean estimate ``x - s v`` is exactly the reference."""
    return (x - ref) / sigma


def is_full_step(step: int, warmup: int, reset_every: int) -> bool:
    """Full steps: the first ``warmup`` steps, then every ``reset_every`` steps after them
    (warmup 4, reset 9: steps 0-3, 13, 22, 31, ... as the authors use on 50 steps)."""
    if step < warmup:
        return True
    return reset_every > 0 and step > warmup and (step - warmup) % reset_every == 0

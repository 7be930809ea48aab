"""Attention with cached keys/values, and the KV-Edit latent updates (pure torch).

Shapes follow ComfyUI's DiT attention after rotary embedding: ``q, k, v`` are
``[B, heads, L, head_dim]``; an additive bias broadcasts to ``[B, heads, Lq, Lk]``.
"""
from __future__ import annotations

import torch


def append_cached(k: torch.Tensor, v: torch.Tensor, k_extra, v_extra):
    """Keys/values of the computed tokens followed by cached ones (broadcast over batch).
    ``k_extra`` / ``v_extra`` are tensors or sequences of parts, joined in one concatenation."""
    B = k.shape[0]

    def parts(extra, like):
        for t in (extra if isinstance(extra, (list, tuple)) else (extra,)):
            if t.shape[0] != B:
                t = t.expand(B, *t.shape[1:])
            yield t.to(like.dtype)

    return torch.cat((k, *parts(k_extra, k)), dim=2), torch.cat((v, *parts(v_extra, v)), dim=2)


def extra_length(extra) -> int:
    """Number of cached tokens in a tensor or a sequence of parts (dimension 2)."""
    if isinstance(extra, (list, tuple)):
        return sum(t.shape[2] for t in extra)
    return extra.shape[2]


def extend_bias(mask: torch.Tensor | None, lq: int, lk_own: int, n_extra: int, extra_bias: float,
                dtype, device) -> torch.Tensor | None:
    """Additive attention bias for keys ``[own | extra]``: ``extra_bias`` on every cached
    (extra) column, an existing mask kept on the own columns. ``None`` when nothing to add."""
    if mask is None and extra_bias == 0.0:
        return None
    if mask is None:
        bias = torch.zeros(1, 1, 1, lk_own + n_extra, dtype=dtype, device=device)
        bias[..., lk_own:] = extra_bias
        return bias
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask.to(device), float("-inf"))
    while mask.ndim < 4:
        mask = mask.unsqueeze(0)
    pad = torch.full((*mask.shape[:-1], n_extra), float(extra_bias), dtype=mask.dtype, device=mask.device)
    return torch.cat((mask, pad), dim=-1)


def mask_guided_bias(txt_len: int, fg: torch.Tensor, n_ref: int, dtype, device) -> torch.Tensor:
    """KV-Edit's mask-guided inversion pattern over ``[text | image | reference]``.

    Text (and reference) queries see every token; foreground image queries see text,
    reference and foreground; background queries see text, reference and background.
    ``fg`` is a bool vector over image tokens. Returns an additive bias ``[1, 1, L, L]``.
    """
    fg = fg.to(device)
    n_img = fg.numel()
    L = txt_len + n_img + n_ref
    kind = torch.zeros(L, dtype=torch.int8, device=device)  # 0 = context (text/ref), 1 = fg, 2 = bg
    kind[txt_len:txt_len + n_img] = torch.where(fg, 1, 2).to(torch.int8)
    q = kind.view(L, 1)
    k = kind.view(1, L)
    allowed = (q == 0) | (k == 0) | (q == k)
    bias = torch.zeros(L, L, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
    return bias.view(1, 1, L, L)


def reference_attention(q, k, v, bias=None):
    """Plain softmax attention, for tests: ``[B, H, Lq, D]``."""
    scale = q.shape[-1] ** -0.5
    logits = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if bias is not None:
        logits = logits + bias.float()
    return torch.einsum("bhqk,bhkd->bhqd", logits.softmax(-1), v.float())


# -- rectified-flow steps used by KV-Edit ---------------------------------------------------

def euler(x: torch.Tensor, v: torch.Tensor, s_from: float, s_to: float) -> torch.Tensor:
    return x + (s_to - s_from) * v


def keep_background(x: torch.Tensor, source: torch.Tensor, latent_mask: torch.Tensor) -> torch.Tensor:
    """``x`` where the latent mask is 1 (edit), ``source`` elsewhere. ``latent_mask`` is bool
    ``[B, h, w]`` (or ``[1, h, w]``); latents are ``[B, C, h, w]`` or ``[B, C, T, h, w]``."""
    m = latent_mask.to(x.device)
    m = m.view(m.shape[0], 1, *([1] * (x.ndim - 4)), *m.shape[-2:])
    return torch.where(m, x, source.to(x.dtype))

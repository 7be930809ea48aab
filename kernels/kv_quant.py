"""KIVI-style low-bit storage of attention keys/values (4-bit, 2-bit).

Keys and values of a KV cache have different outlier structure: keys have a few channels of
large magnitude, values do not. KIVI (Liu et al., 2024) therefore quantizes

* **keys per channel**: one (scale, minimum) pair per channel for every group of ``group``
  consecutive tokens, shape ``[B, heads, ceil(T / group), D]``;
* **values per token**: one pair per token for every group of ``group`` consecutive channels,
  shape ``[B, heads, T, ceil(D / group)]``.

Codes are asymmetric integers ``q = round((x - min) / scale)`` in ``0 .. 2**bits - 1``, packed
along the channel dimension (two 4-bit or four 2-bit codes per byte). Scales and minimums are
stored in bfloat16 (the range of the keys/values can exceed fp16). The minimum is rounded
down and the scale up before coding, so the stored pair always covers the group:

    |x - dequantize(x)| <= scale / 2        (scale = the group's stored scale)

up to float32 rounding. :func:`error_bound` returns that bound per element for tests and the
benchmark. Dequantisation is block by block at use (a multiply-add in float32).
"""
from __future__ import annotations

import torch

BITS = {"int4": 4, "int2": 2}
GROUP = 128          # tokens per key group, channels per value group (clipped to the head size)
STAT_DTYPE = torch.bfloat16
_STAT_ULP = 2.0 ** -7  # relative spacing of bfloat16 (rounding error <= half of it)


class QuantError(ValueError):
    pass


def _down(x: torch.Tensor) -> torch.Tensor:
    """bfloat16 values <= x."""
    return (x - x.abs() * _STAT_ULP - 1e-30).to(STAT_DTYPE)


def _up(x: torch.Tensor) -> torch.Tensor:
    """bfloat16 values >= x (x >= 0)."""
    return (x * (1 + _STAT_ULP) + 1e-30).to(STAT_DTYPE)


def packed_dim(dim: int, bits: int) -> int:
    per = 8 // bits
    if dim % per:
        raise QuantError(f"head size {dim} is not a multiple of {per} ({bits}-bit codes are packed {per} per byte)")
    return dim // per


def _pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    q = q.to(torch.uint8).reshape(*q.shape[:-1], q.shape[-1] // per, per)
    out = q[..., 0].clone()
    for i in range(1, per):
        out |= q[..., i] << (bits * i)
    return out


def _unpack(p: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    mask = (1 << bits) - 1
    parts = [(p >> (bits * i)) & mask for i in range(per)]
    return torch.stack(parts, -1).reshape(*p.shape[:-1], p.shape[-1] * per)


def _code(mn: torch.Tensor, mx: torch.Tensor, bits: int):
    qmax = (1 << bits) - 1
    lo = _down(mn)
    scale = _up((mx - lo.float()) / qmax).float().clamp(min=1e-30)
    return lo, scale


def quantize_keys(k: torch.Tensor, bits: int, group: int = GROUP):
    """Per-channel quantization of keys ``[B, H, T, D]`` in groups of ``group`` tokens.
    Returns ``(packed uint8 [B, H, T, D*bits/8], scale [B, H, G, D], minimum [B, H, G, D])``."""
    B, H, T, D = k.shape
    packed_dim(D, bits)
    g = max(1, min(group, T))
    ng = -(-T // g)
    x = k.float()
    pad = ng * g - T
    xp = torch.cat([x, x[:, :, -1:].expand(B, H, pad, D)], 2) if pad else x
    xg = xp.reshape(B, H, ng, g, D)
    lo, scale = _code(xg.amin(3), xg.amax(3), bits)
    q = ((xg - lo.float()[:, :, :, None]) / scale[:, :, :, None]).round_().clamp_(0, (1 << bits) - 1)
    q = q.reshape(B, H, ng * g, D)[:, :, :T]
    return _pack(q, bits), scale.to(STAT_DTYPE), lo


def quantize_values(v: torch.Tensor, bits: int, group: int = GROUP):
    """Per-token quantization of values ``[B, H, T, D]`` in groups of ``group`` channels.
    Returns ``(packed uint8 [B, H, T, D*bits/8], scale [B, H, T, G], minimum [B, H, T, G])``."""
    B, H, T, D = v.shape
    packed_dim(D, bits)
    g = max(1, min(group, D))
    if D % g:
        raise QuantError(f"head size {D} is not a multiple of the value group size {g}")
    xg = v.float().reshape(B, H, T, D // g, g)
    lo, scale = _code(xg.amin(4), xg.amax(4), bits)
    q = ((xg - lo.float()[..., None]) / scale[..., None]).round_().clamp_(0, (1 << bits) - 1)
    return _pack(q.reshape(B, H, T, D), bits), scale.to(STAT_DTYPE), lo


def dequantize_keys(p: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, bits: int,
                    group: int = GROUP) -> torch.Tensor:
    q = _unpack(p, bits).float()
    T = q.shape[2]
    idx = torch.arange(T, device=q.device) // max(1, min(group, T))
    return q * scale.float()[:, :, idx] + lo.float()[:, :, idx]


def dequantize_values(p: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, bits: int) -> torch.Tensor:
    q = _unpack(p, bits).float()
    B, H, T, D = q.shape
    ng = scale.shape[3]
    qg = q.reshape(B, H, T, ng, D // ng)
    return (qg * scale.float()[..., None] + lo.float()[..., None]).reshape(B, H, T, D)


def key_stat_shape(shape, group: int = GROUP) -> tuple[int, ...]:
    B, H, T, D = shape
    g = max(1, min(group, T))
    return (B, H, -(-T // g), D)


def value_stat_shape(shape, group: int = GROUP) -> tuple[int, ...]:
    B, H, T, D = shape
    g = max(1, min(group, D))
    return (B, H, T, D // g)


def error_bound(scale: torch.Tensor, kind: str, shape, group: int = GROUP) -> torch.Tensor:
    """Largest |x - dequantized x| allowed per element of a key (``kind='k'``) or value tensor."""
    B, H, T, D = shape
    s = scale.float() / 2
    if kind == "k":
        g = max(1, min(group, T))
        return s.repeat_interleave(g, 2)[:, :, :T]
    g = max(1, min(group, D))
    return s.repeat_interleave(g, 3)

"""PIE-Bench's run-length masks (numpy only: the runner uses this without torch)."""
from __future__ import annotations

import numpy as np

PIE_SIZE = (512, 512)


def rle_decode(encoded, shape=PIE_SIZE, border: bool = True) -> np.ndarray:
    """PIE-Bench's run-length mask (flat ``[start, length, start, length, ...]`` over the row-major
    image) as a float ``[H, W]`` array; ``border=True`` sets the outer one-pixel frame to 1
    ("edited") as the reference's ``mask_decode`` does to absorb annotation errors at the edge."""
    h, w = int(shape[0]), int(shape[1])
    n = h * w
    if len(encoded) % 2:
        raise ValueError(f"a run-length mask needs start/length pairs, got {len(encoded)} numbers")
    flat = np.zeros(n + 1, dtype=np.int64)
    starts = np.asarray(encoded[0::2], dtype=np.int64)
    lengths = np.asarray(encoded[1::2], dtype=np.int64)
    if (starts < 0).any() or (lengths < 0).any():
        raise ValueError("a run-length mask holds a negative start or length")
    keep = starts < n
    starts, ends = starts[keep], np.minimum(starts[keep] + lengths[keep], n)
    np.add.at(flat, starts, 1)
    np.add.at(flat, ends, -1)
    mask = (np.cumsum(flat[:n]) > 0).astype(np.float64).reshape(h, w)
    return with_border(mask) if border else mask


def rle_encode(mask) -> list[int]:
    """Inverse of :func:`rle_decode` (without the border): runs of ones in the row-major mask."""
    flat = np.asarray(mask).reshape(-1) > 0.5
    padded = np.concatenate([[False], flat, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


def with_border(mask):
    """The reference's convention: the outer one-pixel frame counts as edited."""
    out = mask.clone() if hasattr(mask, "clone") else np.array(mask, copy=True)
    out[..., 0, :] = 1
    out[..., -1, :] = 1
    out[..., :, 0] = 1
    out[..., :, -1] = 1
    return out

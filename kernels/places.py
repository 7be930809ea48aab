"""Geometry of places in fractions of the image (pure torch): named regions, places relative to an
object's box, scaling around an anchor, move offsets and their clipping at the border, and masks.

Used by ``kernels/spatial.py`` (the phrase parser) and the instruct nodes.
"""
from __future__ import annotations

import torch

T3 = 1.0 / 3.0
REGIONS: dict[str, tuple[float, float, float, float]] = {  # (x0, y0, x1, y1), fractions of the image
    "corner_tl": (0.0, 0.0, T3, T3), "corner_tr": (1 - T3, 0.0, 1.0, T3),
    "corner_bl": (0.0, 1 - T3, T3, 1.0), "corner_br": (1 - T3, 1 - T3, 1.0, 1.0),
    "quarter_tl": (0.0, 0.0, 0.5, 0.5), "quarter_tr": (0.5, 0.0, 1.0, 0.5),
    "quarter_bl": (0.0, 0.5, 0.5, 1.0), "quarter_br": (0.5, 0.5, 1.0, 1.0),
    "left_half": (0.0, 0.0, 0.5, 1.0), "right_half": (0.5, 0.0, 1.0, 1.0),
    "top_half": (0.0, 0.0, 1.0, 0.5), "bottom_half": (0.0, 0.5, 1.0, 1.0),
    "left_third": (0.0, 0.0, T3, 1.0), "right_third": (1 - T3, 0.0, 1.0, 1.0),
    "top_third": (0.0, 0.0, 1.0, T3), "bottom_third": (0.0, 1 - T3, 1.0, 1.0),
    "center_third": (T3, 0.0, 1 - T3, 1.0),
    "edge_top": (0.0, 0.0, 1.0, 0.2), "edge_bottom": (0.0, 0.8, 1.0, 1.0),
    "edge_left": (0.0, 0.0, 0.2, 1.0), "edge_right": (0.8, 0.0, 1.0, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75),
    "top_center": (T3, 0.0, 1 - T3, 0.5), "bottom_center": (T3, 0.5, 1 - T3, 1.0),
}

class SpatialError(ValueError):
    """An instruction the parser cannot turn into a place (the message says what to change)."""


def _box_and(a, b):
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _clip(b):
    return (max(0.0, b[0]), max(0.0, b[1]), min(1.0, b[2]), min(1.0, b[3]))


def _empty(b) -> bool:
    return b[2] <= b[0] or b[3] <= b[1]


def relation_boxes(relation: str, obj) -> list:
    x0, y0, x1, y1 = obj
    w, h = x1 - x0, y1 - y0
    boxes = {"above": [(x0, y0 - h, x1, y0)], "below": [(x0, y1, x1, y1 + h)],
             "left_of": [(x0 - w, y0, x0, y1)], "right_of": [(x1, y0, x1 + w, y1)]}
    boxes["next_to"] = boxes["left_of"] + boxes["right_of"]
    return [c for c in (_clip(b) for b in boxes[relation]) if not _empty(c)]


def _anchor(b, touching=None) -> tuple[float, float]:
    """The point a place is scaled around: the border (or object side) it touches, else its centre."""
    if touching is not None:
        return touching
    ax = b[0] if b[0] <= 0.0 < b[2] < 1.0 else b[2] if b[2] >= 1.0 > b[0] > 0.0 else (b[0] + b[2]) / 2
    ay = b[1] if b[1] <= 0.0 < b[3] < 1.0 else b[3] if b[3] >= 1.0 > b[1] > 0.0 else (b[1] + b[3]) / 2
    return ax, ay


def scale_box(b, factor: float, anchor=None):
    ax, ay = _anchor(b) if anchor is None else anchor
    return _clip((ax + (b[0] - ax) * factor, ay + (b[1] - ay) * factor,
                  ax + (b[2] - ax) * factor, ay + (b[3] - ay) * factor))


def target_offset(obj, region) -> tuple[float, float]:
    """Offset that puts the object's box at a target place: against the border(s) the place
    touches, centred in it otherwise, per axis."""
    x0, y0, x1, y1 = obj
    r0x, r0y, r1x, r1y = region

    def axis(a0, a1, lo, hi):
        if lo <= 0.0 and hi < 1.0:
            return -a0
        if hi >= 1.0 and lo > 0.0:
            return 1.0 - a1
        if lo <= 0.0 and hi >= 1.0:
            return 0.0
        return (lo + hi) / 2 - (a0 + a1) / 2
    return axis(x0, x1, r0x, r1x), axis(y0, y1, r0y, r1y)


def _shift(b, off):
    return (b[0] + off[0], b[1] + off[1], b[2] + off[0], b[3] + off[1])


def clip_offset(obj, offset, tol: float = 1e-9) -> tuple[tuple[float, float], str]:
    """Clip an offset so the moved box stays inside the image. Raises :class:`SpatialError` when the
    requested move would put the object entirely outside; returns (offset, notice or "")."""
    x0, y0, x1, y1 = obj
    dx, dy = offset
    if x1 + dx <= tol or x0 + dx >= 1 - tol or y1 + dy <= tol or y0 + dy >= 1 - tol:
        raise SpatialError(f"the move (x {100 * dx:+.1f}%, y {100 * dy:+.1f}%) puts the object entirely outside "
                           f"the image; use a smaller move")
    cx = min(max(dx, -x0), 1.0 - x1)
    cy = min(max(dy, -y0), 1.0 - y1)
    if abs(cx - dx) > tol or abs(cy - dy) > tol:
        return (cx, cy), (f"the move (x {100 * dx:+.1f}%, y {100 * dy:+.1f}%) would push the object out of the "
                          f"image; clipped to x {100 * cx:+.1f}%, y {100 * cy:+.1f}% (it stops at the border)")
    return (dx, dy), ""


# ------------------------------------------------------------------------------- masks

def box_of_mask(mask: torch.Tensor, threshold: float = 0.5):
    """Fractional box ``(x0, y0, x1, y1)`` of a ``[H, W]`` (or batch: union) mask, or None if empty."""
    m = mask
    while m.ndim > 2:
        m = m.amax(0)
    on = m > threshold
    if not bool(on.any()):
        return None
    H, W = on.shape
    ys = torch.nonzero(on.any(1)).flatten()
    xs = torch.nonzero(on.any(0)).flatten()
    return (int(xs[0]) / W, int(ys[0]) / H, (int(xs[-1]) + 1) / W, (int(ys[-1]) + 1) / H)


def boxes_mask(boxes, height: int, width: int) -> torch.Tensor:
    """Hard ``[H, W]`` mask of a union of fractional boxes (pixel centres inside a box are 1)."""
    m = torch.zeros(height, width)
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    for x0, y0, x1, y1 in boxes:
        inside = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        m[inside] = 1.0
    return m


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union

"""Automatic judge of synthetic images: which palette colour and shape sits in a grid cell.

No learned judge: a pixel belongs to an object colour when it is within ``COLOUR_RADIUS`` of
that palette entry (backgrounds are kept far from every object colour); the blob of the
dominant colour in a cell is compared with each shape's prototype stretched to the blob's
bounding box, and the best intersection-over-union names the shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenes import COLOURS, POSITIONS, SHAPES, SIZE, EditPair, Obj, Scene, shape_mask

COLOUR_RADIUS = 70.0
MIN_PIXELS = 60          # fewer object-coloured pixels than this in a cell: the cell is empty
MARGIN = 0               # objects stay inside their cell: no widening, so a neighbour never leaks in
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)
_PROTO = 96


def _prototypes() -> dict[str, np.ndarray]:
    out = {}
    for s in SHAPES:
        m = shape_mask(s, _PROTO, _PROTO, _PROTO * 0.9, size=2 * _PROTO)
        ys, xs = np.nonzero(m)
        out[s] = m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return out


PROTOTYPES = _prototypes()


@dataclass(frozen=True)
class Found:
    colour: str | None
    shape: str | None
    pixels: int
    iou: float = 0.0


def colour_labels(img: np.ndarray) -> np.ndarray:
    """(H, W) index into the object palette, -1 where no object colour is near."""
    d = np.linalg.norm(img[..., None, :].astype(np.float32) - _PALETTE[None, None], axis=-1)
    lab = d.argmin(-1)
    return np.where(d.min(-1) <= COLOUR_RADIUS, lab, -1)


def cell_box(cell: int, size: int) -> tuple[int, int, int, int]:
    step = size / 3
    r, c = divmod(cell, 3)
    return (max(0, int(c * step) - MARGIN), max(0, int(r * step) - MARGIN),
            min(size, int((c + 1) * step) + MARGIN), min(size, int((r + 1) * step) + MARGIN))


def shape_of(blob: np.ndarray) -> tuple[str, float]:
    """Best-matching shape of a boolean blob and its IoU with that shape's prototype."""
    ys, xs = np.nonzero(blob)
    crop = blob[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    best, best_iou = SHAPES[0], -1.0
    for s, p in PROTOTYPES.items():
        yi = ((np.arange(h) + 0.5) * p.shape[0] / h).astype(int)
        xi = ((np.arange(w) + 0.5) * p.shape[1] / w).astype(int)
        q = p[yi][:, xi]
        iou = float((q & crop).sum() / max(1, (q | crop).sum()))
        if iou > best_iou:
            best, best_iou = s, iou
    return best, best_iou


def find(img: np.ndarray, cell: int, labels: np.ndarray | None = None) -> Found:
    """The object in a grid cell (colour and shape), or ``Found(None, None, n)`` if empty."""
    labels = colour_labels(img) if labels is None else labels
    x0, y0, x1, y1 = cell_box(cell, img.shape[0])
    lab = labels[y0:y1, x0:x1]
    counts = np.bincount(lab[lab >= 0].ravel(), minlength=len(_NAMES))
    k = int(counts.argmax())
    if counts[k] < MIN_PIXELS * (img.shape[0] / SIZE) ** 2:
        return Found(None, None, int(counts.sum()))
    shape, iou = shape_of(lab == k)
    return Found(_NAMES[k], shape, int(counts[k]), iou)


def object_ok(img: np.ndarray, obj: Obj, labels=None) -> bool:
    f = find(img, obj.cell, labels)
    return f.colour == obj.colour and f.shape == obj.shape


def empty(img: np.ndarray, cell: int, labels=None) -> bool:
    return find(img, cell, labels).colour is None


def scene_ok(img: np.ndarray, scene: Scene) -> bool:
    """Every captioned object in its cell with its colour and shape, and no other object."""
    labels = colour_labels(img)
    cells = {o.cell for o in scene.objects}
    return (all(object_ok(img, o, labels) for o in scene.objects)
            and all(empty(img, c, labels) for c in range(9) if c not in cells))


def edit_ok(img: np.ndarray, pair: EditPair) -> bool:
    """The edit asked for is done: the new object is in its cell (colour, shape, add, move) and
    the old one is gone from a cell it left (remove, move)."""
    labels = colour_labels(img)
    ok = True
    if pair.result is not None:
        ok &= object_ok(img, pair.result, labels)
    if pair.subject is not None and (pair.result is None or pair.result.cell != pair.subject.cell):
        ok &= empty(img, pair.subject.cell, labels)
    return bool(ok)


def others_kept(img: np.ndarray, pair: EditPair) -> bool:
    """Every object the edit does not touch is still there, unchanged in colour and shape."""
    labels = colour_labels(img)
    touched = {o.cell for o in (pair.subject, pair.result) if o is not None}
    return all(object_ok(img, o, labels) for o in pair.target.objects if o.cell not in touched)


def psnr_outside(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, 8-bit range) of two images over the pixels where ``mask`` is False."""
    keep = ~mask.astype(bool)
    d = (a.astype(np.float64) - b.astype(np.float64))[keep]
    mse = float((d * d).mean()) if d.size else 0.0
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def equal_outside(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> bool:
    keep = ~mask.astype(bool)
    return bool(np.array_equal(a[keep], b[keep]))


def token_truth(changed: np.ndarray, patch: int) -> np.ndarray:
    """(h, w) True for tokens whose ``patch`` x ``patch`` pixels are all unchanged."""
    h, w = changed.shape[0] // patch, changed.shape[1] // patch
    return ~changed[:h * patch, :w * patch].reshape(h, patch, w, patch).any(axis=(1, 3))


def settled_precision_recall(settled: np.ndarray, changed: np.ndarray) -> tuple[float, float]:
    """Precision and recall of tokens a method settled (left alone) against the tokens whose
    pixels truly do not change. ``settled`` is an (h, w) boolean token grid."""
    patch = changed.shape[0] // settled.shape[0]
    truth = token_truth(changed, patch)
    tp = float((settled & truth).sum())
    return tp / max(1.0, float(settled.sum())), tp / max(1.0, float(truth.sum()))


__all__ = ["Found", "colour_labels", "find", "object_ok", "empty", "scene_ok", "edit_ok", "others_kept",
           "psnr_outside", "equal_outside", "settled_precision_recall", "token_truth", "POSITIONS"]

"""MoveObject's work: turn "move this object by (dx, dy)" into the inputs of ExemplarLatentSurgery.

On the source latent's grid (offsets are rounded to whole latent cells):

* ``exemplar`` (LATENT): the object's bounding box cut from the source latent;
* ``region`` (MASK): the object's mask shifted by the offset; ExemplarLatentSurgery places the
  exemplar into the region's bounding box (the same size, so placement copies it cell for cell)
  and only where the region is 1;
* ``fill`` / ``fill_region``: the old place not covered by the new one, filled with the mean of
  the source around the object (a neutral start that the sampler regenerates);
* ``change_map`` (MASK): old place U new place, 1 there, feathered outward by ``feather`` pixels
  (so both places stay exactly 1: the exemplar lands, the old place is regenerated) and 0 far
  away, where ExemplarLatentSurgery keeps the source bit-exact.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...kernels import spatial as SP
from ...kernels import surgery as K
from ..common import NodeInputError, note

NODE = "MoveObject"


def _source_latent(source, vae):
    if isinstance(source, dict) and isinstance(source.get("samples"), torch.Tensor):
        return source
    if isinstance(source, torch.Tensor) and source.ndim == 4:
        if vae is None:
            raise NodeInputError(f"{NODE}: 'source' is an IMAGE; connect the model's VAE to 'vae' (or give a LATENT)")
        return {"samples": vae.encode(source[..., :3].contiguous())}
    raise NodeInputError(f"{NODE}: 'source' must be a LATENT or an IMAGE")


def shift_cells(m: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift ``[..., H, W]`` by whole cells; what leaves is dropped, what enters is 0."""
    out = torch.zeros_like(m)
    H, W = m.shape[-2:]
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[..., yd, xd] = m[..., ys, xs]
    return out


def move_object(source, object_mask, offset_x: float, offset_y: float, feather: int = 16, vae=None):
    """Returns (exemplar LATENT, region MASK, fill LATENT, fill_region MASK, change_map MASK, notes)."""
    for name, v in (("offset_x", offset_x), ("offset_y", offset_y)):
        if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise NodeInputError(f"{NODE}: {name} is {v}; give a finite fraction of the image (e.g. 0.1 = 10% "
                                 f"to the right / down)")
    latent = _source_latent(source, vae)
    S = latent["samples"]
    if object_mask is None:
        raise NodeInputError(f"{NODE}: connect the object's mask to 'object_mask'")
    try:
        m = K.as_map_batch(object_mask)
    except K.SurgeryError as e:
        raise NodeInputError(f"{NODE}: object_mask: {e}") from None
    notes: list[str] = []
    h, w = S.shape[-2:]
    mh, mw = m.shape[-2:]
    ds = max(1, min(mh // h, mw // w))  # the VAE's factor: 100x60 px -> 12x7 cells is 8, not round(60 / 7)
    if (mh, mw) not in ((h, w), (h * ds, w * ds)):
        notes.append(note(NODE, f"object_mask is {mw}x{mh}, not the source's {w * ds}x{h * ds}; it is resized"))
    obj = (K.resize_map(m.clamp(0, 1), (h, w)).amax(0) >= 0.5).float()  # union over the batch, latent grid
    box = SP.box_of_mask(obj)
    if box is None:
        raise NodeInputError(f"{NODE}: object_mask is empty; paint the object on the source image")
    try:
        (fx, fy), clip_note = SP.clip_offset(box, (float(offset_x), float(offset_y)))
    except SP.SpatialError as e:
        raise NodeInputError(f"{NODE}: {e}") from None
    if clip_note:
        notes.append(note(NODE, clip_note))
    dx, dy = round(fx * w), round(fy * h)
    if dx == 0 and dy == 0:
        notes.append(note(NODE, "the offset is below one latent cell: the object does not move"))
    y0, x0 = round(box[1] * h), round(box[0] * w)
    y1, x1 = round(box[3] * h), round(box[2] * w)
    exemplar = {"samples": S[..., y0:y1, x0:x1].clone()}
    new = shift_cells(obj, dy, dx)
    old_only = (obj > 0) & ~(new > 0)
    # fill for the old place: the mean of the source in a ring around the object
    grow = max(1, min(h, w) // 8)
    ring = (F.max_pool2d(obj[None, None], 2 * grow + 1, 1, grow)[0, 0] > 0) & (obj == 0) & (new == 0)
    sel = ring if bool(ring.any()) else (obj == 0)
    flat = S.movedim(1, -1)[..., sel, :] if S.ndim == 4 else S.movedim(1, -1)[:, :, sel, :]
    mean = flat.float().mean(dim=tuple(range(flat.ndim - 1)))
    shape = [1, S.shape[1]] + [1] * (S.ndim - 2)
    fill = {"samples": mean.reshape(shape).expand_as(S).to(S.dtype).clone()}

    def up(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(ds, -2).repeat_interleave(ds, -1)[None].float()

    region = up(new)
    fill_region = up(old_only.float())
    union = torch.maximum(region, up(obj))
    change = K.grow_feather(union, int(feather)).clamp(0, 1)
    notes.append(f"{NODE}: object box x {x0}-{x1} y {y0}-{y1} (latent cells) moved by {dx}, {dy} cells "
                 f"({100 * dx / w:+.1f}%, {100 * dy / h:+.1f}% of the image)")
    return exemplar, region, fill, fill_region, change, notes

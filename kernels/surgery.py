"""Latent surgery math for exemplar-driven edits (PIXELS, ``shared/methods/pixels.md``).

Pure torch, no ComfyUI. Polarity everywhere: a change map ``C`` holds 1 = change (take the
exemplar / regenerate freely) and 0 = keep the source, as ComfyUI masks do.

* **Pinning schedule**: with ``N`` sampling steps, at step ``i`` (the model call at sigma
  ``s_i``) a latent pixel is pinned to the source when ``1 - C > i / N``; otherwise it keeps
  the model's result. A pixel with change ``c`` is therefore held for its first
  ``ceil((1 - c) N)`` steps and then evolves freely; ``C = 0`` is held all the way,
  ``C = 1`` never.
  The threshold ``i / N`` can follow another curve (``power``, ``sigmoid``; see
  :func:`pin_threshold`).
* **Change maps** are clamped to ``[0, 1]`` and resized to the latent grid (area averaging
  when shrinking, so a constant 0 or 1 region stays exactly 0 or 1).
* **Placement** puts an exemplar into a region's bounding box: ``fit`` (keep the aspect,
  whole exemplar visible, centred), ``fill`` (keep the aspect, cover the box, centre crop)
  or ``stretch`` (to the box's size).
* **Strength maps**: box feathering (centred on the edge, or outward so the mask stays 1),
  linear and radial gradients, and max / min / multiply combinations, for building change
  maps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PLACEMENTS = ("fit", "fill", "stretch")
PIN_CURVES = ("linear", "power", "sigmoid")
COMBINE_OPS = ("max", "min", "multiply")


class SurgeryError(ValueError):
    """An input the surgery cannot use."""


# ---------------------------------------------------------------------------- change maps

def as_map_batch(mask: torch.Tensor) -> torch.Tensor:
    """A MASK (``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``) as float32 ``[B, H, W]``."""
    if not isinstance(mask, torch.Tensor):
        raise SurgeryError(f"expected a tensor mask, got {type(mask).__name__}")
    m = mask
    if m.ndim == 2:
        m = m.unsqueeze(0)
    while m.ndim > 3 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3:
        raise SurgeryError(f"expected a mask of shape [H, W] or [B, H, W], got {tuple(mask.shape)}")
    return m.float()


def clamp_unit(m: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``m`` clamped to ``[0, 1]`` (NaN counts as 0), and whether anything changed."""
    nan = torch.isnan(m)
    out = torch.where(nan, torch.zeros_like(m), m).clamp(0.0, 1.0)
    changed = bool(nan.any()) or bool((m < 0).any()) or bool((m > 1).any())
    return out, changed


def resize_map(m: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize ``[B, h, w]`` to ``[B, H, W]``.

    Same size: returned as is. Shrinking (both sides): area averaging, which keeps constant
    regions exact (a block of ones averages to exactly 1). Otherwise bilinear.
    """
    H, W = int(hw[0]), int(hw[1])
    if tuple(m.shape[-2:]) == (H, W):
        return m
    x = m.unsqueeze(1)
    if m.shape[-2] >= H and m.shape[-1] >= W:
        y = F.adaptive_avg_pool2d(x, (H, W))
    else:
        y = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    return y[:, 0]


def match_batch(m: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Repeat a batch of one to ``batch``; any other mismatch is an error."""
    if m.shape[0] == batch:
        return m
    if m.shape[0] == 1:
        return m.expand(batch, *m.shape[1:])
    raise SurgeryError(f"{what} has a batch of {m.shape[0]} but the source latent has {batch}; "
                       f"give one, or one per latent")


# ------------------------------------------------------------------------ pinning schedule

def pin_threshold(step: int, steps: int, curve: str = "linear", power: float = 2.0,
                  steepness: float = 6.0) -> float:
    """Threshold ``t_i`` of step ``i`` of ``N``: a pixel is pinned while ``1 - C > t_i``.

    The curve shapes the authors' code sketches (``diffusion_pipe.py``, PIXELS 9b1e5a8):
    ``linear`` ``t = i/N`` (their default), ``power`` ``t = (i/N) ** p`` (they sketch p = 2
    and 3: pixels are released later, keeping the source longer), ``sigmoid``
    ``t = sigmoid(k (i/N - 1/2))`` (they sketch k = 6, i.e. ``sigmoid(6 i/N - 3)``, not
    renormalised). Every curve stays below 1 for ``i < N``, so ``C = 0`` is pinned at every
    step, and at or above 0, so ``C = 1`` is never pinned.
    """
    if steps < 1:
        raise SurgeryError(f"steps must be >= 1, got {steps}")
    x = step / steps
    if curve == "linear":
        return x
    if curve == "power":
        if not (power > 0 and math.isfinite(power)):
            raise SurgeryError(f"the power curve's exponent must be a positive number, got {power}")
        return x ** float(power)
    if curve == "sigmoid":
        if not (steepness > 0 and math.isfinite(steepness)):
            raise SurgeryError(f"the sigmoid curve's steepness must be a positive number, got {steepness}")
        return 1.0 / (1.0 + math.exp(-float(steepness) * (x - 0.5)))
    raise SurgeryError(f"pinning curve must be one of {', '.join(PIN_CURVES)}, got {curve!r}")


def pinned(change: torch.Tensor, step: int, steps: int, curve: str = "linear", power: float = 2.0,
           steepness: float = 6.0) -> torch.Tensor:
    """Bool: which pixels are held to the source at step ``step`` of ``steps``:
    ``1 - C > t_i`` with ``t_i`` from :func:`pin_threshold` (``i/N`` for the linear curve)."""
    return (1.0 - change) > pin_threshold(step, steps, curve, power, steepness)


def step_index(sigma: float, sigmas: torch.Tensor, rtol: float = 1e-4) -> int:
    """Index ``i`` of the step whose interval ``(s_{i+1}, s_i]`` holds ``sigma``.

    ``sigmas`` is the sampler's full schedule ``s_0 > ... > s_N``. A model call at exactly
    ``s_i`` is step ``i``; calls between two sigmas (second-order samplers) count for the
    step they belong to. A small relative tolerance absorbs sigma round-trips through
    timesteps.
    """
    s = sigmas.detach().flatten().float().cpu()
    n = s.numel() - 1
    if n < 1:
        return 0
    sig = float(sigma)
    count = int((s[:n] >= sig * (1.0 - rtol)).sum())
    return min(max(count - 1, 0), n - 1)


def free_mask(change: torch.Tensor, sigma: float, sigmas: torch.Tensor, curve: str = "linear",
              power: float = 2.0, steepness: float = 6.0) -> torch.Tensor:
    """Denoise mask for one model call: 1 where the pixel follows the model, 0 where pinned."""
    n = max(int(sigmas.numel()) - 1, 1)
    i = step_index(sigma, sigmas)
    return (~pinned(change, i, n, curve, power, steepness)).to(change.dtype)


# ------------------------------------------------------------------------------- placement

@dataclass(frozen=True)
class Box:
    """Half-open bounding box on the latent grid."""
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def hw(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def bounding_box(region: torch.Tensor) -> Box | None:
    """Bounding box of the true pixels of a bool ``[H, W]`` (or ``[B, H, W]``: their union)."""
    r = region
    if r.ndim == 3:
        r = r.any(0)
    ys = torch.nonzero(r.any(1)).flatten()
    xs = torch.nonzero(r.any(0)).flatten()
    if ys.numel() == 0:
        return None
    return Box(int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1)


@dataclass(frozen=True)
class Placement:
    """Where a source of aspect ``h:w`` goes in a box of ``bh x bw`` cells.

    Resize the source to ``resize`` cells, cut ``paste`` cells starting at ``crop``, and
    put them at ``offset`` inside the box.
    """
    resize: tuple[int, int]
    crop: tuple[int, int]
    paste: tuple[int, int]
    offset: tuple[int, int]


def placement(src_hw: tuple[int, int], box_hw: tuple[int, int], mode: str) -> Placement:
    h, w = float(src_hw[0]), float(src_hw[1])
    bh, bw = int(box_hw[0]), int(box_hw[1])
    if h <= 0 or w <= 0 or bh <= 0 or bw <= 0:
        raise SurgeryError(f"cannot place a {src_hw} exemplar into a {box_hw} box")
    if mode == "stretch":
        return Placement((bh, bw), (0, 0), (bh, bw), (0, 0))
    if mode == "fit":
        s = min(bh / h, bw / w)
        rh = min(bh, max(1, round(h * s)))
        rw = min(bw, max(1, round(w * s)))
        return Placement((rh, rw), (0, 0), (rh, rw), ((bh - rh) // 2, (bw - rw) // 2))
    if mode == "fill":
        s = max(bh / h, bw / w)
        rh = max(bh, round(h * s))
        rw = max(bw, round(w * s))
        return Placement((rh, rw), ((rh - bh) // 2, (rw - bw) // 2), (bh, bw), (0, 0))
    raise SurgeryError(f"placement must be one of {', '.join(PLACEMENTS)}, got {mode!r}")


def resize_last2(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize the last two dims of any ``[..., h, w]`` tensor (bilinear, antialiased when
    shrinking); the same size is returned untouched."""
    H, W = int(hw[0]), int(hw[1])
    if tuple(x.shape[-2:]) == (H, W):
        return x
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, x.shape[-2], x.shape[-1]).float()
    shrink = x.shape[-2] > H or x.shape[-1] > W
    y = F.interpolate(flat, size=(H, W), mode="bilinear", align_corners=False, antialias=shrink)
    return y.reshape(*lead, H, W).to(x.dtype)


def arrange(x: torch.Tensor, p: Placement, unit: int = 1) -> torch.Tensor:
    """Resize ``[..., h, w]`` by placement ``p`` (cells of ``unit`` pixels) and cut the part
    that is pasted: ``[..., paste_h * unit, paste_w * unit]``."""
    y = resize_last2(x, (p.resize[0] * unit, p.resize[1] * unit))
    cy, cx = p.crop[0] * unit, p.crop[1] * unit
    return y[..., cy:cy + p.paste[0] * unit, cx:cx + p.paste[1] * unit]


def paste(canvas: torch.Tensor, patch: torch.Tensor, box: Box, p: Placement) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy of ``canvas`` ``[..., H, W]`` with ``patch`` (the arranged exemplar) written at
    its place in ``box``, and the bool ``[H, W]`` of the cells written."""
    out = canvas.clone()
    cover = torch.zeros(canvas.shape[-2:], dtype=torch.bool, device=canvas.device)
    y0, x0 = box.y0 + p.offset[0], box.x0 + p.offset[1]
    ph, pw = p.paste
    out[..., y0:y0 + ph, x0:x0 + pw] = patch.to(out.dtype)
    cover[y0:y0 + ph, x0:x0 + pw] = True
    return out, cover


def composite_start(source: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]],
                    change: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Start latent: each placed exemplar where its ``where`` mask is true and ``C == 1``,
    the source everywhere else; later layers go on top.

    ``source`` is ``[B, C, H, W]`` or ``[B, C, T, H, W]``; each layer is (placed exemplar of
    the source's shape, bool ``[B, H, W]``); ``change`` is ``[B, H, W]``. Returns the start
    latent and, per layer, how many latent pixels (over the batch) it was written to.
    """
    out = source.clone()
    full = change >= 1.0
    written = []
    for placed, where in layers:
        sel = where & full
        written.append(int(sel.sum()))
        m = sel.view(sel.shape[0], 1, *([1] * (source.ndim - 4)), *sel.shape[-2:])
        out = torch.where(m, placed.to(out.dtype), out)
    return out, written


# --------------------------------------------------------------------------- strength maps

def box_feather(m: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable box blur of width ``2 r + 1`` (edges replicated): a straight edge becomes a
    linear ramp ``2 r + 1`` pixels wide. ``r = 0`` returns ``m`` unchanged."""
    r = int(radius)
    if r <= 0:
        return m
    x = m.unsqueeze(1).float()
    k = 2 * r + 1
    # Sum with a kernel of ones, then divide: a block of ones stays exactly 1 (k ones sum
    # to exactly k), which the surgery relies on (the exemplar lands where C == 1).
    kh = torch.ones((1, 1, 1, k), dtype=x.dtype, device=x.device)
    kv = kh.view(1, 1, k, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kh) / k
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), kv) / k
    return x[:, 0].clamp(0.0, 1.0)


def inner_feather(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Blend weights for pasting an edit back into its source: 1 deep inside the mask,
    falling to 0 at its border over about ``radius`` pixels, exactly 0 outside."""
    m = (mask > 0.5).float()
    if radius <= 0:
        return m
    return ((box_feather(m, radius) - 0.5) * 2).clamp(0, 1) * m


def grow_feather(m: torch.Tensor, radius: int) -> torch.Tensor:
    """Feather outward: the mask stays exactly 1 where it was 1, and falls linearly to 0 over
    about ``2 r + 1`` pixels outside it (grown by ``r`` with a square max filter, then box
    feathered by ``r``). ``r = 0`` returns ``m`` unchanged."""
    r = int(radius)
    if r <= 0:
        return m
    grown = F.max_pool2d(m.unsqueeze(1).float(), kernel_size=2 * r + 1, stride=1, padding=r)[:, 0]
    return torch.maximum(box_feather(grown, r), m.float())


def linear_gradient(hw: tuple[int, int], angle_deg: float, start: float, end: float) -> torch.Tensor:
    """``[H, W]`` ramp along direction ``angle`` (0 = left to right, 90 = top to bottom):
    0 before ``start``, 1 after ``end``, linear between. Positions are fractions of the
    image's extent along the direction; ``start > end`` gives the reverse ramp."""
    H, W = int(hw[0]), int(hw[1])
    a = math.radians(angle_deg)
    dx, dy = math.cos(a), math.sin(a)
    ys = (torch.arange(H, dtype=torch.float64) + 0.5) / H
    xs = (torch.arange(W, dtype=torch.float64) + 0.5) / W
    proj = xs[None, :] * dx * W + ys[:, None] * dy * H  # pixel units along the direction
    corners = [0.0, dx * W, dy * H, dx * W + dy * H]
    lo, hi = min(corners), max(corners)
    t = (proj - lo) / max(hi - lo, 1e-12)
    if math.isclose(start, end):
        out = (t >= start).double()
    else:
        out = ((t - start) / (end - start)).clamp(0.0, 1.0)
    return out.float()


def radial_gradient(hw: tuple[int, int], cx: float, cy: float, inner: float, outer: float) -> torch.Tensor:
    """``[H, W]``: 1 within ``inner`` of the centre ``(cx, cy)``, 0 beyond ``outer``, linear
    between. Centre in fractions of width / height, radii in fractions of the shorter side."""
    H, W = int(hw[0]), int(hw[1])
    ys = torch.arange(H, dtype=torch.float64) + 0.5
    xs = torch.arange(W, dtype=torch.float64) + 0.5
    d = torch.sqrt((xs[None, :] - cx * W) ** 2 + (ys[:, None] - cy * H) ** 2) / min(H, W)
    if outer <= inner:
        out = (d <= inner).double()
    else:
        out = ((outer - d) / (outer - inner)).clamp(0.0, 1.0)
    return out.float()


def combine(maps: list[torch.Tensor], op: str) -> torch.Tensor:
    """Combine ``[B, H, W]`` maps (batches of one broadcast) with max / min / multiply."""
    if not maps:
        raise SurgeryError("nothing to combine")
    if op not in COMBINE_OPS:
        raise SurgeryError(f"combine must be one of {', '.join(COMBINE_OPS)}, got {op!r}")
    out = maps[0]
    for m in maps[1:]:
        if op == "max":
            out = torch.maximum(out, m)
        elif op == "min":
            out = torch.minimum(out, m)
        else:
            out = out * m
    return out


def map_preview(m: torch.Tensor) -> torch.Tensor:
    """A ``[B, H, W]`` map as a grey IMAGE ``[B, H, W, 3]`` (white = change)."""
    return m.clamp(0.0, 1.0).unsqueeze(-1).expand(*m.shape, 3).contiguous()

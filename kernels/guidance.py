"""Guidance math for instruction editing: per-step scale schedules, the instruction-strength
text scale, and the dynamic negative guidance (DNG) posterior.

Pure torch, no ComfyUI.

**Schedules.** A scale over ``N`` sampling steps, step ``i = 0 .. N-1``:
constant ``v_i = a``; linear ``v_i = a + (b - a) i / (N - 1)``; cosine
``v_i = b + (a - b) (1 + cos(pi i / (N - 1))) / 2`` (from ``a`` at the first step to ``b`` at the
last, flat at both ends); list: the ``N`` values given (any other count is an error).

**Dynamic negative guidance** (Koulischer et al., ICLR 2025). With a negative prediction
``D_neg`` (the negative instruction) and a reference ``D_ref`` (the same image without it), the
guided prediction is ``D - lambda_t (D_neg - D_ref)`` with ``lambda_t = lambda p / (1 - p)``; the
posterior ``p`` that the sample shows the negative concept starts at the prior and is updated
after every step from the state the sampler actually reached:

    p <- clamp(p * exp((-T (|x' - mu_neg|^2 - |x' - mu_ref|^2) + offset) / (2 s^2)), p_min, p_max)

where ``mu_neg`` / ``mu_ref`` are the DDPM posterior means of the next state under each
prediction and ``s^2`` the DDPM posterior variance. In ComfyUI's sigma space (``x = x0 + sigma
eps``) a DDPM step from ``sigma`` to ``sigma'`` has mean ``x - (sigma^2 - sigma'^2) / sigma * eps``
with ``eps = (x - D) / sigma`` and variance ``sigma'^2 (sigma^2 - sigma'^2) / sigma^2`` (the
ancestral step at eta = 1): in these coordinates the authors' update on a DDPM chain is
reproduced exactly (the scale ``1 / sqrt(alpha_bar)`` between the two coordinate systems cancels
in the ratio of distance to variance; the offset is scaled by ``1 + sigma'^2`` to stay in the
authors' units). For flow-matching models (FLUX, Qwen-Image) the same sigma-space formula is used
as an approximation of the transition. The update is one scalar per batch item.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("constant", "linear", "cosine", "list")


class GuidanceError(ValueError):
    """A schedule or setting the guider cannot use (the message says what to change)."""


def parse_values(text: str) -> list[float]:
    """Numbers from a comma / space / newline separated string ("7.5, 7, 6.5")."""
    if text is None:
        return []
    parts = [p for p in text.replace(",", " ").replace(";", " ").split() if p]
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise GuidanceError(f"'{p}' in the values list is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise GuidanceError(f"'{p}' in the values list is not a scale; give finite numbers of 0 or more "
                                f"(e.g. '7.5, 7, 6.5')")
        out.append(v)
    return out


def schedule(kind: str, steps: int, start: float, end: float = None, values=None) -> list[float]:
    """The scale at each of ``steps`` steps."""
    if steps < 1:
        raise GuidanceError(f"steps must be >= 1, got {steps}")
    if kind not in SCHEDULES:
        raise GuidanceError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{kind}'")
    a = float(start)
    b = a if end is None else float(end)
    if kind == "constant":
        return [a] * steps
    if kind == "list":
        vals = parse_values(values) if isinstance(values, str) else list(values or [])
        if len(vals) != steps:
            raise GuidanceError(f"the values list has {len(vals)} value(s) but the sampler runs {steps} step(s); "
                                f"give exactly one value per step")
        return [float(v) for v in vals]
    if steps == 1:
        return [a]
    out = []
    for i in range(steps):
        u = i / (steps - 1)
        if kind == "linear":
            out.append(a + (b - a) * u)
        else:
            out.append(b + (a - b) * (1.0 + math.cos(math.pi * u)) / 2.0)
    return out


def scale_from_strength(strength: float, low: float, high: float) -> float:
    """Text scale for an instruction of detail ``strength`` in [0, 1]: ``low + (high - low) s``."""
    if high < low:
        raise GuidanceError(f"the upper bound ({high}) is below the lower bound ({low})")
    s = min(max(float(strength), 0.0), 1.0)
    return low + (high - low) * s


# ------------------------------------------------------------------- dynamic negative guidance

@dataclass(frozen=True)
class DNGSettings:
    scale: float = 1.0      # lambda
    prior: float = 0.2      # p at the first step
    temperature: float = 1.0
    offset: float = 0.0
    p_min: float = 1e-6
    p_max: float = 0.99

    def check(self) -> None:
        if not 0.0 < self.prior < 1.0:
            raise GuidanceError(f"the prior must be between 0 and 1 (exclusive), got {self.prior}")
        if not 0.0 <= self.p_min < self.p_max < 1.0:
            raise GuidanceError(f"need 0 <= p_min < p_max < 1, got p_min {self.p_min}, p_max {self.p_max}")


def dng_scale(p: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-item negative scale ``lambda p / (1 - p)``."""
    return scale * p / (1.0 - p)


def ddpm_means(x: torch.Tensor, sigma: float, sigma_next: float, denoised: torch.Tensor) -> torch.Tensor:
    """DDPM (ancestral, eta = 1) posterior mean of the next state, in sigma space."""
    eps = (x - denoised) / sigma
    return x - (sigma * sigma - sigma_next * sigma_next) / sigma * eps


def ddpm_variance(sigma: float, sigma_next: float) -> float:
    return sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma)


def posterior_update(p: torch.Tensor, x_next: torch.Tensor, mu_ref: torch.Tensor, mu_neg: torch.Tensor,
                     variance: float, s: DNGSettings, offset_scale: float = 1.0) -> torch.Tensor:
    """One DNG posterior step (per batch item); ``variance`` <= 0 (the last step) leaves ``p``.
    ``offset_scale`` converts the offset to the coordinates of the distances (see DNGState)."""
    if variance <= 0.0:
        return p
    xn = x_next.flatten(1).double()
    d_neg = ((xn - mu_neg.flatten(1).double()) ** 2).sum(1)
    d_ref = ((xn - mu_ref.flatten(1).double()) ** 2).sum(1)
    out = p.double() * torch.exp((-s.temperature * (d_neg - d_ref) + s.offset * offset_scale) / (2.0 * variance))
    if torch.isnan(out).any():
        raise GuidanceError("the negative-guidance posterior became NaN; lower p_max")
    return out.clamp(s.p_min, s.p_max).to(p.dtype)


class DNGState:
    """The posterior across one sampling run. ``guide`` is called once per model evaluation with
    the current state, its sigma and the two predictions; it updates ``p`` whenever sigma has gone
    down since the last recorded call (one update per step; a second-order sampler's extra calls
    at the same sigma do not update), then returns the per-item negative scale."""

    def __init__(self, settings: DNGSettings, batch: int, device=None):
        settings.check()
        self.s = settings
        self.p = torch.full((batch,), float(settings.prior), dtype=torch.float64, device=device)
        self.prev = None  # (x, sigma, denoised_ref, denoised_neg)
        self.history: list[float] = []

    def observe(self, x: torch.Tensor, sigma: float, d_ref: torch.Tensor, d_neg: torch.Tensor) -> torch.Tensor:
        if self.p.device != x.device:
            self.p = self.p.to(x.device)
        if self.prev is not None and sigma < self.prev[1]:
            px, ps, pref, pneg = self.prev
            var = ddpm_variance(ps, sigma)
            # the authors' offset is in variance-preserving units: distances and variance in sigma
            # space are theirs times 1 + sigma'^2 (= 1 / alpha_bar of the next step)
            self.p = posterior_update(self.p, x, ddpm_means(px, ps, sigma, pref), ddpm_means(px, ps, sigma, pneg),
                                      var, self.s, offset_scale=1.0 + sigma * sigma)
        self.prev = (x.detach(), float(sigma), d_ref.detach(), d_neg.detach())
        self.history.append(float(self.p.mean()))
        return dng_scale(self.p, self.s.scale)

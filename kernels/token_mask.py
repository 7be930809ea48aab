"""Pixel mask -> latent-pixel mask -> token mask.

Follows the pack's KV-Edit note (``shared/methods/kv-edit.md``):

* the pixel mask ``M`` (1 = region to edit) is resized to latent resolution with bilinear
  interpolation and thresholded at ``> 0``: any latent pixel the brush touched is editable
  (a slight dilation). Plain bilinear downsampling by 8 reads only the 2x2 pixels nearest
  each latent pixel's centre, so a thin stroke elsewhere in the footprint would be lost:
  the footprint's maximum (adaptive max-pool) is OR-ed in, so no painted pixel is ever
  dropped;
* a model that patchifies ``p x p`` latent pixels into one token makes a token foreground
  when any of its latent pixels is foreground. Latents whose size is not a multiple of
  ``p`` are padded by the model; padded pixels carry no mask, so a border token is
  foreground only through its real pixels.

Token order is row-major over the token grid, as FLUX, Qwen-Image and other DiTs flatten
``b c (h ph) (w pw) -> b (h w) (c ph pw)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class MaskError(ValueError):
    """A mask that cannot be used (wrong rank, empty, ...)."""


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """Bring a mask to ``[B, H, W]`` float32 (ComfyUI MASKs are ``[H, W]`` or ``[B, H, W]``)."""
    if not isinstance(mask, torch.Tensor):
        raise MaskError(f"expected a tensor mask, got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    elif mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise MaskError(f"expected a mask of shape [H, W] or [B, H, W], got {tuple(mask.shape)}")
    return mask.float()


RESIZE_MODES = ("touched", "bilinear")


def latent_pixel_mask(mask: torch.Tensor, latent_hw: tuple[int, int], resize: str = "touched") -> torch.Tensor:
    """Resize a pixel mask to ``latent_hw`` (bilinear) and threshold at ``> 0``.

    ``resize="touched"`` (default) also keeps every latent pixel whose footprint holds a
    painted pixel; ``"bilinear"`` is plain bilinear, as the KV-Edit authors' code does.
    Returns a bool tensor ``[B, h, w]``.
    """
    if resize not in RESIZE_MODES:
        raise MaskError(f"mask resize must be one of {RESIZE_MODES}")
    m = as_mask_batch(mask)
    h, w = int(latent_hw[0]), int(latent_hw[1])
    if h < 1 or w < 1:
        raise MaskError(f"latent size must be positive, got {latent_hw}")
    if tuple(m.shape[-2:]) == (h, w):
        return m > 0
    m4 = m.unsqueeze(1)
    resized = F.interpolate(m4, size=(h, w), mode="bilinear", align_corners=False)
    if resize == "bilinear":
        return resized[:, 0] > 0
    touched = F.adaptive_max_pool2d(m4, (h, w)) if m.shape[-2] >= h and m.shape[-1] >= w else resized
    return ((resized > 0) | (touched > 0))[:, 0]


def token_grid(latent_hw: tuple[int, int], patch: int) -> tuple[int, int]:
    """Token grid of a latent of ``latent_hw`` patchified by ``patch`` (padding to a multiple)."""
    if patch < 1:
        raise MaskError(f"patch size must be >= 1, got {patch}")
    return math.ceil(latent_hw[0] / patch), math.ceil(latent_hw[1] / patch)


def token_mask_from_latent(latent_mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Bool ``[B, th, tw]``: a token is foreground when any of its latent pixels is."""
    if latent_mask.ndim != 3:
        raise MaskError(f"expected a latent mask [B, h, w], got {tuple(latent_mask.shape)}")
    if patch == 1:
        return latent_mask.bool().clone()
    h, w = latent_mask.shape[-2:]
    th, tw = token_grid((h, w), patch)
    padded = F.pad(latent_mask.float().unsqueeze(1), (0, tw * patch - w, 0, th * patch - h), value=0.0)
    return F.max_pool2d(padded, kernel_size=patch, stride=patch)[:, 0] > 0


def expand_token_mask(token_mask: torch.Tensor, patch: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Inverse view of :func:`token_mask_from_latent`: bool ``[B, h, w]``, each latent pixel
    taking its token's value (the region a model really recomputes)."""
    up = token_mask.bool().repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)
    return up[..., : latent_hw[0], : latent_hw[1]]


def flatten_tokens(token_mask: torch.Tensor) -> torch.Tensor:
    """``[B, th, tw]`` -> ``[B, th*tw]`` in the models' row-major token order."""
    return token_mask.reshape(token_mask.shape[0], -1)


@dataclass
class TokenMasks:
    """Everything later stages need about one edit region."""

    latent: torch.Tensor  # bool [B, h, w], latent pixels that may change
    tokens: torch.Tensor  # bool [B, th, tw], tokens that are computed (foreground)
    patch: int

    @property
    def flat(self) -> torch.Tensor:
        return flatten_tokens(self.tokens)

    def computed_fraction(self) -> torch.Tensor:
        """Fraction of image tokens computed, per batch item (float ``[B]``)."""
        return self.flat.float().mean(dim=1)

    def counts(self) -> tuple[list[int], int]:
        """(foreground tokens per item, total tokens per item)."""
        flat = self.flat
        return [int(v) for v in flat.sum(dim=1)], flat.shape[1]


def build_token_masks(mask: torch.Tensor, latent_hw: tuple[int, int], patch: int,
                      allow_empty: bool = False, resize: str = "touched") -> TokenMasks:
    """Pixel mask -> :class:`TokenMasks` for a latent of ``latent_hw`` and a model patch size.

    Raises :class:`MaskError` when a batch item's mask selects nothing, unless ``allow_empty``.
    """
    latent = latent_pixel_mask(mask, latent_hw, resize)
    if not allow_empty:
        empty = [i for i in range(latent.shape[0]) if not bool(latent[i].any())]
        if empty:
            which = "the mask" if latent.shape[0] == 1 else f"mask item(s) {empty}"
            raise MaskError(f"{which} selects no pixel: paint the region to edit (white = edit)")
    tokens = token_mask_from_latent(latent, patch)
    return TokenMasks(latent=latent, tokens=tokens, patch=patch)


def overlay_image(image: torch.Tensor, pixel_region: torch.Tensor, grid_px: int,
                  fg_color=(1.0, 0.25, 0.2), bg_color=(0.2, 0.45, 1.0), alpha: float = 0.45,
                  grid_alpha: float = 0.35) -> torch.Tensor:
    """Tint an image ``[H, W, C]`` (0..1): regenerated pixels red, kept pixels blue, and draw
    the token grid every ``grid_px`` pixels so users see the model's real granularity."""
    H, W = image.shape[:2]
    rgb = image[..., :3].float()
    region = pixel_region.bool()[:H, :W].unsqueeze(-1)
    fg = torch.tensor(fg_color, dtype=rgb.dtype, device=rgb.device)
    bg = torch.tensor(bg_color, dtype=rgb.dtype, device=rgb.device)
    tint = torch.where(region, fg, bg)
    out = rgb * (1 - alpha) + tint * alpha
    if grid_px >= 4:
        lines = torch.zeros(H, W, dtype=torch.bool, device=rgb.device)
        lines[::grid_px, :] = True
        lines[:, ::grid_px] = True
        out = torch.where(lines.unsqueeze(-1), out * (1 - grid_alpha), out)
    return out.clamp(0, 1)

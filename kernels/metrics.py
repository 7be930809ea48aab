"""PIE-Bench edit metrics as pure tensor math (the definitions of cure-lab/PnPInversion ``evaluation/``).

Images are float tensors ``[B, H, W, 3]`` in 0..1 (ComfyUI's IMAGE layout); masks ``[B, H, W]``
with 1 = edited region. The reference reads 8-bit PNG files, so :func:`to_uint8` quantises the way
ComfyUI's SaveImage writes them (clip, then truncate) before anything is measured.

* PSNR / MSE / SSIM: torchmetrics' functional forms with the reference's settings
  (``data_range=1.0``; SSIM's 11-pixel Gaussian window, sigma 1.5), on ``image * mask``.
* Structure distance: MSE between the cosine self-similarity matrices of the last-layer DINO ViT
  keys of source and edit (:func:`keys_self_similarity`), after the reference's preprocessing
  (:func:`dino_preprocess`; it feeds 0..255 pixel values to the ImageNet normalisation, kept as is).
* CLIP score: ``100 * max(cos(image, text), 0)`` as torchmetrics' CLIPScore.

A metric that is undefined for a mask (the edited part of an empty mask, the unedited part of a
full one) is ``None`` ("not available"), never NaN.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.functional.regression import mean_squared_error

from .pie_masks import PIE_SIZE, rle_decode, rle_encode, with_border  # noqa: F401 (masks live there, numpy only)

# Values this far outside 0..1 are clipped as SaveImage clips them (resampling overshoots a little);
# anything further out is a wrong range (e.g. 0..255) and refused: clipping it would give "perfect" scores.
RANGE_SLACK = 0.25
SSIM_WINDOW = 11  # SSIM's Gaussian window: smaller images have no SSIM

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG of ``image`` holds (ComfyUI's SaveImage: clip to 0..255, truncate)."""
    return (image.float() * 255.0).clamp(0, 255).to(torch.uint8)


def check_pixels(image: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` (naming ``name``) for an empty image, NaN or infinite values, or values
    outside 0..1 (beyond :data:`RANGE_SLACK`): none of them can be measured as a saved PNG."""
    if image.numel() == 0:
        raise ValueError(f"the {name} image is empty ({'x'.join(str(int(v)) for v in image.shape)}): "
                         "connect an image with pixels")
    if not bool(torch.isfinite(image).all()):
        raise ValueError(f"the {name} image holds NaN or infinite values: check the node that made it")
    lo, hi = float(image.min()), float(image.max())
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(f"the {name} image holds values from {lo:g} to {hi:g}: images must be 0..1 "
                         "(ComfyUI's IMAGE; divide 0..255 pixels by 255)")


def ssim_defined(h: int, w: int) -> bool:
    """SSIM needs both sides at least :data:`SSIM_WINDOW` pixels."""
    return min(h, w) >= SSIM_WINDOW


def region(image01: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``image * mask`` for ``[H, W, 3]`` images and ``[H, W]`` masks (the reference's masking)."""
    return image01 * mask[..., None].to(image01.dtype)


def _chw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(2, 0, 1).unsqueeze(0).float()


# --- pixel metrics (torchmetrics, reference settings) -------------------------------------------

def psnr(edit01: torch.Tensor, src01: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(_chw(edit01), _chw(src01), data_range=1.0))


def mse(edit01: torch.Tensor, src01: torch.Tensor) -> float:
    return float(mean_squared_error(_chw(edit01)[0].contiguous(), _chw(src01)[0].contiguous()))


def ssim(edit01: torch.Tensor, src01: torch.Tensor) -> float:
    return float(structural_similarity_index_measure(_chw(edit01), _chw(src01), data_range=1.0))


PIXEL_METRICS = {"psnr": psnr, "mse": mse, "ssim": ssim}


def region_defined(mask: torch.Tensor, part: str) -> bool:
    """Whether a part (``edit``: mask, ``unedit``: 1 - mask) has any pixel: the reference
    reports "nan" otherwise; here the metric is ``None`` (not available)."""
    return bool((mask if part == "edit" else 1 - mask).sum() > 0)


# --- structure distance (DINO ViT key self-similarity) ------------------------------------------

def dino_resize_size(h: int, w: int, size: int = 224, max_size: int = 480) -> tuple[int, int]:
    """Output size of torchvision's ``Resize(size, max_size=max_size)`` for an ``h x w`` image."""
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if h <= w else (new_long, new_short)


def dino_preprocess(image255: torch.Tensor) -> torch.Tensor:
    """The reference's DINO input: ``[B, 3, H, W]`` pixel values in 0..255 (not 0..1: its
    structure distance skips the division), resized as ``Resize(224, max_size=480)`` (bilinear,
    antialiased) and normalised with ImageNet's mean and std."""
    h, w = image255.shape[-2:]
    size = dino_resize_size(h, w)
    if (h, w) != size:
        image255 = F.interpolate(image255, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, dtype=image255.dtype, device=image255.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image255.dtype, device=image255.device).view(1, 3, 1, 1)
    return (image255 - mean) / std


def keys_self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine self-similarity ``[T, T]`` of token keys ``[T, D]`` (all heads concatenated)."""
    norm = keys.norm(dim=-1, keepdim=True)
    factor = torch.clamp(norm @ norm.transpose(-1, -2), min=eps)
    return (keys @ keys.transpose(-1, -2)) / factor


def structure_distance(keys_edit: torch.Tensor, keys_src: torch.Tensor) -> float:
    """MSE between the key self-similarity matrices of the edit and the source."""
    return float(F.mse_loss(keys_self_similarity(keys_edit.float()), keys_self_similarity(keys_src.float())))


# --- CLIP score ---------------------------------------------------------------------------------

def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> float:
    """torchmetrics' CLIPScore for one image/text pair: ``100 * max(cos, 0)``."""
    img = image_embeds.float().reshape(-1)
    txt = text_embeds.float().reshape(-1)
    if img.numel() != txt.numel():
        raise ValueError(f"the CLIP vision model gives {img.numel()}-wide embeddings but the text encoder "
                         f"{txt.numel()}-wide ones: connect the matching pair (e.g. ViT-L/14 and CLIP-L)")
    cos = (img / img.norm()) @ (txt / txt.norm())
    return float(torch.clamp(100.0 * cos, min=0.0))


def finite_or_none(value):
    """A number for a table, or ``None`` where it is not a finite number."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None

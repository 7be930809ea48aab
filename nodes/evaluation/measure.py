"""The PIE-Bench metric set for one source/edit/mask triple, on ComfyUI's side (models from
``models.py``, math from ``kernels.metrics``). Shared by the EditMetrics node and the runner
(which drives the node through the HTTP API)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...kernels import metrics as km
from . import models

PIXEL_PARTS = ("unedit", "edit")
METRICS = (
    "structure_distance",
    "psnr_unedit_part", "lpips_unedit_part", "mse_unedit_part", "ssim_unedit_part",
    "psnr_edit_part", "lpips_edit_part", "mse_edit_part", "ssim_edit_part",
    "clip_similarity_source_image", "clip_similarity_target_image", "clip_similarity_target_image_edit_part",
)
MASK_CONVENTIONS = ("pie-bench border", "as given")


@dataclass
class Settings:
    mask_convention: str = "pie-bench border"
    lpips_net: str = "squeeze"
    dino_name: str = models.DINO_DEFAULT
    clip_vision: object = None
    clip: object = None


@dataclass
class Result:
    values: dict = field(default_factory=dict)       # metric -> float, or None = not available
    unavailable: dict = field(default_factory=dict)  # metric -> why
    notes: list = field(default_factory=list)
    mask_convention: str = ""

    def as_dict(self) -> dict:
        return {"metrics": {k: _json_number(v) for k, v in self.values.items()},
                "unavailable": dict(self.unavailable), "notes": list(self.notes),
                "mask_convention": self.mask_convention}


def _json_number(v):
    if v is None:
        return None
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _resize_image(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x = image.movedim(-1, 0)[None].float()
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    return x[0].movedim(0, -1).clamp(0, 1)


class _Models:
    """Loads each model once per evaluation; a missing one is remembered with its message."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.errors: dict = {}
        self._lpips = self._dino = None

    def _get(self, key, load):
        if key in self.errors:
            return None
        try:
            return load()
        except models.MissingModel as e:
            self.errors[key] = str(e)
            return None

    def lpips(self):
        if self._lpips is None:
            self._lpips = self._get("lpips", lambda: models.lpips_model(self.s.lpips_net))
        return self._lpips

    def dino(self):
        if self._dino is None:
            self._dino = self._get("dino", lambda: models.dino_model(self.s.dino_name))
        return self._dino


def evaluate(source: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor, target_text: str = "",
             source_text: str = "", settings: Settings | None = None, loaded: _Models | None = None) -> Result:
    """Metrics for one ``[H, W, 3]`` source, edit and ``[H, W]`` mask (1 = edited)."""
    s = settings or Settings()
    loaded = loaded or _Models(s)
    res = Result(mask_convention=s.mask_convention)
    h, w = source.shape[:2]
    if edited.shape[:2] != (h, w):
        res.notes.append(f"edited image {edited.shape[1]}x{edited.shape[0]} resized to the source's {w}x{h}")
        edited = _resize_image(edited, h, w)
    if mask.shape[-2:] != (h, w):
        res.notes.append(f"mask {mask.shape[-1]}x{mask.shape[-2]} resized (nearest) to the source's {w}x{h}")
        mask = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0]
    mask = (mask.float() > 0.5).float()
    if s.mask_convention == "pie-bench border":
        mask = km.with_border(mask)
    src8, edit8 = km.to_uint8(source[..., :3]), km.to_uint8(edited[..., :3])
    src01, edit01 = src8.float() / 255.0, edit8.float() / 255.0

    def unavailable(name, why):
        res.values[name] = None
        res.unavailable[name] = why

    # structure distance on the whole image (reference: 0..255 values into DINO's normalisation)
    dino = loaded.dino()
    if dino is None:
        unavailable("structure_distance", loaded.errors["dino"])
    else:
        dev = models.device()
        dino.to(dev)
        batch = torch.stack([edit8, src8]).permute(0, 3, 1, 2).float().to(dev)
        keys = dino.keys(km.dino_preprocess(batch))
        res.values["structure_distance"] = km.structure_distance(keys[0], keys[1])

    lp = loaded.lpips()
    for part in PIXEL_PARTS:
        region_mask = mask if part == "edit" else 1 - mask
        names = [f"{m}_{part}_part" for m in ("psnr", "lpips", "mse", "ssim")]
        if not km.region_defined(mask, part):
            for name in names:
                unavailable(name, f"the mask has no {'edited' if part == 'edit' else 'unedited'} pixels")
            continue
        a, b = km.region(edit01, region_mask), km.region(src01, region_mask)
        for metric in ("psnr", "mse", "ssim"):
            if metric == "ssim" and not km.ssim_defined(h, w):
                unavailable(f"ssim_{part}_part", f"SSIM needs images of at least {km.SSIM_WINDOW}x{km.SSIM_WINDOW} "
                                                  f"pixels (its Gaussian window); this one is {w}x{h}")
                continue
            res.values[f"{metric}_{part}_part"] = km.PIXEL_METRICS[metric](a, b)
        if lp is None:
            unavailable(f"lpips_{part}_part", loaded.errors["lpips"])
        elif min(h, w) < models.LPIPS_MIN_SIZE.get(s.lpips_net, 0):
            least = models.LPIPS_MIN_SIZE[s.lpips_net]
            unavailable(f"lpips_{part}_part",
                        f"LPIPS ({s.lpips_net}) needs images of at least {least} pixels a side; this one is {w}x{h}")
        else:
            res.values[f"lpips_{part}_part"] = models.lpips_distance(lp, a, b)

    clip_pairs = (("clip_similarity_source_image", src8, source_text, None),
                  ("clip_similarity_target_image", edit8, target_text, None),
                  ("clip_similarity_target_image_edit_part", edit8, target_text, mask))
    for name, img8, text, region_mask in clip_pairs:
        if s.clip_vision is None or s.clip is None:
            unavailable(name, "connect a CLIP vision model and a CLIP-L text encoder")
        elif not text.strip():
            unavailable(name, "no " + ("source" if name.endswith("source_image") else "target") + " text given")
        elif region_mask is not None and not km.region_defined(region_mask, "edit"):
            unavailable(name, "the mask has no edited pixels")
        else:
            img = img8 if region_mask is None else (img8.float() * region_mask[..., None]).to(torch.uint8)
            res.values[name] = km.clip_score(models.clip_image_embeds(s.clip_vision, img.float() / 255.0),
                                             models.clip_text_embeds(s.clip, text))
    for name, value in list(res.values.items()):
        if value is not None and math.isnan(value):
            unavailable(name, "undefined (NaN) for these inputs")
    for key, msg in loaded.errors.items():
        if msg not in res.notes:
            res.notes.append(msg)
    res.values = {k: res.values.get(k) for k in METRICS}
    return res


def evaluate_batch(source, edited, mask, target_text="", source_text="", settings: Settings | None = None):
    """Batch-aware: a batch of one is repeated to the largest batch; other sizes must agree.
    Raises ``ValueError`` for inputs that cannot be measured (empty, NaN, not 0..1, wrong shape)."""
    for name, image in (("source", source), ("edited", edited)):
        if image.ndim != 4:
            raise ValueError(f"the {name} image must be a [B, H, W, C] batch, not {list(image.shape)}")
        km.check_pixels(image, name)
    if mask.ndim == 4 and 1 in (mask.shape[1], mask.shape[-1]):  # [B, 1, H, W] or [B, H, W, 1]
        mask = mask.squeeze(1) if mask.shape[1] == 1 else mask.squeeze(-1)
    if mask.ndim not in (2, 3) or mask.numel() == 0:
        raise ValueError(f"the mask must be [B, H, W] or [H, W] with pixels, not {list(mask.shape)}")
    sizes = {int(source.shape[0]), int(edited.shape[0]), int(mask.shape[0] if mask.ndim == 3 else 1)}
    n = max(sizes)
    if len(sizes - {1, n}):
        raise ValueError(f"batch sizes differ (source {source.shape[0]}, edited {edited.shape[0]}, "
                         f"mask {mask.shape[0] if mask.ndim == 3 else 1}): give equal batches or batches of one")
    if mask.ndim == 2:
        mask = mask[None]
    s = settings or Settings()
    loaded = _Models(s)
    pick = (lambda t, i: t[i if t.shape[0] > 1 else 0])
    return [evaluate(pick(source, i), pick(edited, i), pick(mask, i), target_text, source_text, s, loaded)
            for i in range(n)]

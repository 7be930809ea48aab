"""Input checks of the KV-Edit nodes: every bad input becomes ``<Node>: <what to change>``.

ComfyUI 0.3.75 does not check combo values sent through the API, so every combo is checked
here; numbers and latents are checked for NaN/inf; a record is checked against the model
(fingerprint, blocks, heads, recorded steps) before any sampling starts.
"""
from __future__ import annotations

import math

import torch

import comfy.model_management

from ...kernels.kv_record import BackgroundRecord
from ...kernels.kv_store import STORAGE_TYPES
from ...kernels.token_mask import RESIZE_MODES, MaskError, TokenMasks, build_token_masks
from . import engine as ke
from . import place as kp
from ..common import NodeInputError, note
from ..families import FLUX, detect_family

STORAGE_CHOICES = [k for k, v in STORAGE_TYPES.items() if v is not None]
DEVICE_CHOICES = list(kp.PLACES)                              # auto, cpu, compute device, disk
CACHE_PLACES = ["keep", "cpu", "compute device", "disk"]      # BackgroundKVCache: keep = where it is
MODES = ["paper", "authors code"]
RECORD_TOKENS = ["background", "every image token"]
REINIT_FROM = {"inverted latent (paper)": "inverted", "clean latent (authors' code)": "clean"}


def choice(node: str, name: str, value, options) -> None:
    if value not in list(options):
        raise NodeInputError(f"{node}: {name} must be one of {list(options)} (got {value!r})")


def finite_number(node: str, name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise NodeInputError(f"{node}: {name} must be a number (got {value!r})") from None
    if not math.isfinite(v):
        raise NodeInputError(f"{node}: {name} must be a finite number (got {value!r})")
    return v


def finite_tensor(node: str, what: str, t: torch.Tensor, fix: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise NodeInputError(f"{node}: {what} holds NaN or infinite values; {fix}")


def flux_model(model, node: str):
    """A FLUX model without caches that skip evaluations (KV-Edit needs every one)."""
    detect_family(model, node, allowed=(FLUX,))
    to = (getattr(model, "model_options", {}) or {}).get("transformer_options", {}) or {}
    if "easycache" in to:
        raise NodeInputError(f"{node}: the model has EasyCache/LazyCache applied, which skips model evaluations "
                             f"that KV-Edit records and replays; connect {node} to the model before the "
                             f"EasyCache node (KV-Edit already computes only the edited tokens)")


def conditioning(node: str, cond, what: str, single: bool = False) -> None:
    """KV-Edit computes every image token of the whole picture: an area (ConditioningSetArea) makes
    the model see only part of them. Inversion follows one prompt: ConditioningCombine gives two."""
    entries = [c for c in (cond or []) if isinstance(c, (list, tuple)) and len(c) > 1 and isinstance(c[1], dict)]
    entries += [c for c in (cond or []) if isinstance(c, dict)]  # a guider's processed conds
    for c in entries:
        opts = c[1] if isinstance(c, (list, tuple)) else c
        if opts.get("area") is not None:
            raise NodeInputError(f"{node}: {what} has area conditioning (ConditioningSetArea), which KV-Edit cannot "
                                 f"take: it computes the whole image's tokens; remove the area (the edit region "
                                 f"is the mask)")
    if single and len(entries) > 1:
        raise NodeInputError(f"{node}: {what} holds {len(entries)} conditionings (ConditioningCombine?); the "
                             f"inversion follows one prompt: connect a single text encoding")


def fingerprint(model, node: str) -> str:
    try:
        return ke.model_fingerprint(model)
    except ke.FingerprintError as e:
        raise NodeInputError(f"{node}: {e}; this model cannot be checked against a record") from None


def cache_device(choice_: str):
    return comfy.model_management.get_torch_device() if choice_ == "compute device" else torch.device("cpu")


def source(latent: dict, node: str) -> torch.Tensor:
    x = latent["samples"]
    if x.ndim != 4:
        raise NodeInputError(f"{node}: expected a FLUX image latent [B, 16, h, w], got shape {list(x.shape)}")
    if x.shape[0] != 1:
        raise NodeInputError(f"{node}: the latent holds {x.shape[0]} images; KV-Edit inverts one image at a "
                             f"time (pick one with 'Latent From Batch')")
    finite_tensor(node, "the source latent", x, "encode the image again (check the VAE and the image)")
    return x


def mask_size_note(node: str, mask_hw, image_hw, scale: int = 8) -> str | None:
    """``None`` when the mask has the image's size; a note when it is resized; an error when
    its aspect ratio differs (stretching would move the edit region)."""
    H, W = int(mask_hw[0]), int(mask_hw[1])
    h, w = int(image_hw[0]), int(image_hw[1])
    if (H // scale, W // scale) == (h // scale, w // scale) or (H, W) == (h // scale, w // scale):
        return None
    tol = 1.5 * scale / min(h, w) + 0.01
    if abs((W / H) / (w / h) - 1) > tol:
        raise NodeInputError(f"{node}: the mask is {W}x{H} but the image is about {w}x{h} (another aspect "
                             f"ratio); paint the mask on this image or resize it to {w}x{h}")
    return note(node, f"the mask ({W}x{H}) was resized to the image ({w}x{h})")


def masks(mask: torch.Tensor, latent: torch.Tensor, node: str, resize: str = "touched",
          notes: list | None = None) -> TokenMasks:
    choice(node, "mask_resize", resize, RESIZE_MODES)
    m = mask if mask.ndim == 3 else mask.unsqueeze(0)
    if m.ndim != 3 or m.shape[0] != 1:
        raise NodeInputError(f"{node}: give one mask [H, W] for the image (got shape {list(mask.shape)})")
    finite_tensor(node, "the mask", m, "give a mask of values between 0 and 1")
    msg = mask_size_note(node, m.shape[-2:], (latent.shape[-2] * 8, latent.shape[-1] * 8))
    if msg and notes is not None:
        notes.append(msg)
    try:
        return build_token_masks(m, latent.shape[-2:], FLUX.patch, resize=resize)
    except MaskError as e:
        raise NodeInputError(f"{node}: {e}") from None


def sigmas(model, steps: int, sig, node: str) -> torch.Tensor:
    if sig is None:
        return ke.default_sigmas(model, steps)
    s = sig.float().cpu().flatten()
    if s.numel() < 2 or not bool(torch.isfinite(s).all()) or float(s[-1]) != 0.0 or not bool((s[:-1] > s[1:]).all()):
        raise NodeInputError(f"{node}: SIGMAS must fall strictly and end at 0 (a full schedule from a "
                             f"scheduler node with denoise 1.0)")
    top = float(model.get_model_object("model_sampling").sigma_max)
    # well below the top only: some full schedules start a little under it (ddim_uniform: 0.90 at 4 steps,
    # 0.98 at 20), as does denoise 0.9-0.95, so the two cannot be told apart near the top
    if float(s[0]) < 0.8 * top:
        raise NodeInputError(f"{node}: SIGMAS start at {float(s[0]):.4g}, below the model's {top:.4g} (denoise "
                             f"below 1.0?); KV-Edit inverts the whole way: give a full schedule with denoise 1.0")
    return s


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def describe(record: BackgroundRecord) -> str:
    hidden = record.info.get("hidden", record.kv_shape[1] * record.kv_shape[3] if record.kv_shape else 0)
    blocks = len(record.blocks)
    authors = 2 * blocks * hidden * 2 * record.total_tokens * record.steps
    kv = record.store.nbytes()
    ratio = f" = {kv / authors:.1%} of recording every token in bf16" if authors else ""
    stored = record.total_tokens if record.all_tokens else record.background_tokens
    what = "every image token" if record.all_tokens else "background"
    where = (f"on disk, streamed from {record.store.path}" if record.place() == "disk"
             else f"on {record.store.device}")
    text = (f"{what} keys/values: {mib(kv)} ({record.store.storage}, {where}), "
            f"{stored}/{record.total_tokens} {'' if record.all_tokens else 'background '}tokens x {len(record.store.steps())} "
            f"steps x {blocks} blocks{ratio}; trajectory {mib(record.trajectory.numel() * 4)}")
    if record.all_tokens and record.background_tokens:
        text += (f"\nrecording every token costs {record.total_tokens / record.background_tokens:.2f}x a "
                 f"background-only record of this mask; any mask can be painted for the edit")
    return text


def fits_model(record: BackgroundRecord, model, node: str) -> None:
    geo = ke.flux_geometry(model)
    if [tuple(b) for b in record.blocks] != geo["blocks"] or (
            record.kv_shape and (int(record.kv_shape[1]), int(record.kv_shape[3])) != (geo["heads"], geo["head_dim"])):
        raise NodeInputError(f"{node}: the record's keys/values ({len(record.blocks)} blocks, shape "
                             f"{list(record.kv_shape)}) do not fit this model ({len(geo['blocks'])} blocks, "
                             f"{geo['heads']} heads of {geo['head_dim']}); run KVInvert again with this model")


def check_record(record: BackgroundRecord, node: str, model=None, skip: int | None = None, latent=None,
                 mask=None, sig=None, notes: list | None = None) -> TokenMasks | None:
    """Refuse a record that does not fit the edit. Returns the token masks of ``mask`` when it
    differs from the record's own but the record can serve it, else ``None``."""
    finite_tensor(node, "the record's trajectory", record.trajectory, "run KVInvert again (check the model)")
    finite_tensor(node, "the record's source latent", record.source_latent, "run KVInvert again")
    if model is not None:
        fits_model(record, model, node)
    resize = record.info.get("mask_resize", "touched")
    new = None
    mask_problem = None
    if mask is not None:
        new = masks(mask, record.source_latent, node, resize, notes)
        if ke.mask_digest(new.latent) == record.fingerprint["mask"]:
            new = None
        elif record.mask_guided:
            mask_problem = ("mask (the record was made with mask_guided inversion, which depends on the mask; "
                            "a new mask needs a new inversion)")
        else:
            try:
                ke.edit_mask_positions(record, new.tokens)
            except ValueError:
                mask_problem = ("mask (its background holds tokens the record did not store: paint a mask that "
                                "covers the record's region, or invert with record_tokens = every image token)")
    problems = record.mismatches(model=fingerprint(model, node) if model is not None else None,
                                 sigmas=sig.float().cpu().flatten() if sig is not None else None,
                                 latent_shape=list(latent["samples"].shape) if latent is not None else None)
    if mask_problem:
        problems.append(mask_problem)
    if problems:
        raise NodeInputError(f"{node}: this background record was made for another " + "; another ".join(problems)
                             + ". Run KVInvert again for this edit, or use the matching inputs.")
    if latent is not None:
        finite_tensor(node, "the latent", latent["samples"], "encode the image again")
        given, src = latent["samples"].detach().float().cpu(), record.source_latent.float()
        if given.shape == src.shape and not torch.allclose(given, src, rtol=1e-5,
                                                           atol=1e-5 * max(1.0, float(src.abs().max()))):
            raise NodeInputError(f"{node}: the latent is not the one KVInvert inverted (the edit starts from the "
                                 f"record and keeps its background, so another latent would be ignored); connect "
                                 f"the LATENT that went into KVInvert, or run KVInvert on this one")
    if skip is not None and not 0 <= skip < record.steps:
        raise NodeInputError(f"{node}: skip_steps must be between 0 and {record.steps - 1} for a record of "
                             f"{record.steps} steps")
    if skip is not None and record.store.entries:
        recorded = record.store.steps()
        missing = [s for s in range(skip, record.steps)
                   if any(not record.store.has(s, b) for b in record.blocks)]
        if missing:
            first = min(recorded) if recorded else record.steps
            if missing == list(range(skip, min(first, record.steps))) and all(
                    record.store.has(s, b) for s in range(first, record.steps) for b in record.blocks):
                raise NodeInputError(f"{node}: the record starts at step {first} (record_from_step); use "
                                     f"skip_steps >= {first} or invert again")
            raise NodeInputError(f"{node}: the record lacks keys/values for step(s) {missing[:8]}; it is "
                                 f"incomplete, run KVInvert again")
    return new

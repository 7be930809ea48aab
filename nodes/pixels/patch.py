"""ExemplarLatentSurgery and EditStrengthMap: exemplar-driven edits with per-pixel change maps.

The method (``shared/methods/pixels.md``) maps onto ComfyUI's own inpainting machinery:

* the output LATENT carries the start latent (exemplars composited where the change map is
  1, the source elsewhere) and the change map as its ``noise_mask``; ComfyUI's
  ``KSamplerX0Inpaint`` then holds masked-out pixels to that latent, noised to the current
  sigma, at every model call;
* the patched MODEL (a ``clone()``) turns the change map into the per-step binary mask
  ``1 - C > i / N`` through ``set_model_denoise_mask_function``, and an ``OUTER_SAMPLE``
  wrapper pastes the source back where ``C == 0`` after sampling, so kept pixels are
  bit-exact (ComfyUI's latent scaling in and out is not an exact round trip).

DifferentialDiffusion: both nodes set the model's denoise-mask function, and only one runs
per model call. The surgery's schedule wins wherever DifferentialDiffusion sits in the
MODEL chain (before the surgery: replaced; after it: the surgery's sampling wrapper puts
its own schedule back for the run), so the change map is thresholded exactly once per step.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ...kernels import surgery as K
from ..common import NodeInputError, log, note
from ..families import UnsupportedModel, detect_family

NODE = "ExemplarLatentSurgery"
MAP_NODE = "EditStrengthMap"
SLOTS = 3
WRAPPER_KEY = "precise_edit.exemplar_latent_surgery"


class SurgerySchedule:
    """Denoise-mask function: the binary mask ``1 - C > t_i`` for the current step, with
    ``t_i = i / N`` (linear) or another pinning curve (``kernels.surgery.pin_threshold``).

    Called by ComfyUI's ``KSamplerX0Inpaint`` as ``fn(sigma, denoise_mask, extra_options)``
    with the LATENT's noise mask (the change map at latent size) and the sampler's sigmas.
    """

    def __init__(self, curve: str, power: float, steepness: float):
        K.pin_threshold(0, 1, curve, power, steepness)  # refuses an unknown curve or parameter
        self.curve, self.power, self.steepness = curve, float(power), float(steepness)

    def __call__(self, sigma, denoise_mask, extra_options):
        sigmas = extra_options["sigmas"]
        s = float(torch.as_tensor(sigma).flatten()[0])  # ComfyUI passes [B] sigmas, all equal
        return K.free_mask(denoise_mask, s, sigmas, self.curve, self.power, self.steepness)


class FinalPaste:
    """``OUTER_SAMPLE`` wrapper: make sure this surgery's schedule is the denoise-mask
    function of the run, sample, then copy the start latent back where the noise mask is 0."""

    def __init__(self, schedule: SurgerySchedule):
        self.schedule = schedule

    def __call__(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, *args, **kwargs):
        import comfy.utils  # noqa: PLC0415

        options = executor.class_obj.model_options  # the guider's: this sampling run's copy
        current = options.get("denoise_mask_function")
        if current is not None and not isinstance(current, SurgerySchedule):
            log.info("%s: another denoise-mask function (e.g. DifferentialDiffusion) was set after the "
                     "surgery; the surgery schedule 1 - C > t_i is used instead for this run", NODE)
        options["denoise_mask_function"] = self.schedule
        out = executor(noise, latent_image, sampler, sigmas, denoise_mask, *args, **kwargs)
        if denoise_mask is None:  # sampled without the surgery's LATENT: nothing to paste
            return out
        keep = comfy.utils.reshape_mask(denoise_mask.to(out.device), out.shape) == 0
        return torch.where(keep, latent_image.to(out), out)


def patch_model(model, schedule: SurgerySchedule):
    """A clone of ``model`` with the surgery schedule and the final paste; returns it and
    whether another denoise-mask function was replaced."""
    import comfy.patcher_extension as pe  # noqa: PLC0415

    m = model.clone()
    previous = m.model_options.get("denoise_mask_function")
    replaced = previous is not None and not isinstance(previous, SurgerySchedule)
    m.set_model_denoise_mask_function(schedule)
    m.remove_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)  # chained surgeries: one paste
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, FinalPaste(schedule))
    return m, replaced


def _map_to_grid(mask, latent_hw, downscale, what, notes, batch):
    """A MASK as float ``[B, h, w]`` on the latent grid, clamped to [0, 1]; notes on resizing
    and clamping."""
    try:
        m = K.as_map_batch(mask)
    except K.SurgeryError as e:
        raise NodeInputError(f"{NODE}: {what}: {e}") from None
    m, clamped = K.clamp_unit(m)
    if clamped:
        notes.append(note(NODE, f"{what} has values outside [0, 1]; they are clamped"))
    h, w = latent_hw
    image_hw = (h * downscale, w * downscale)
    if tuple(m.shape[-2:]) not in ((h, w), image_hw):
        notes.append(note(NODE, f"{what} is {m.shape[-1]}x{m.shape[-2]} but the source image is "
                                f"{image_hw[1]}x{image_hw[0]}; it is resized"))
    m = K.resize_map(m, (h, w))
    try:
        return K.match_batch(m, batch, what)
    except K.SurgeryError as e:
        raise NodeInputError(f"{NODE}: {e}") from None


def _exemplar_latent(exemplar, p, vae, downscale, source, k):
    """The exemplar (a LATENT dict, or else a 4-D IMAGE tensor: ``surgery`` refuses anything
    else first) arranged by placement ``p``, as latent cells shaped like ``source``."""
    name = f"exemplar_{k}"
    if isinstance(exemplar, dict) and "samples" in exemplar:
        x = exemplar["samples"]
        if source.ndim == 5 and x.ndim == 4:
            x = x.unsqueeze(2)
        elif source.ndim == 4 and x.ndim == 5 and x.shape[2] == 1:
            x = x[:, :, 0]
        if x.ndim != source.ndim:
            raise NodeInputError(f"{NODE}: {name} is a {x.ndim}-D latent but the source is {source.ndim}-D; "
                                 f"encode the exemplar with this model's VAE")
        _require_finite(x, f"{name} (a LATENT)", "encode the exemplar image again or check the node that made it")
        patch = K.arrange(x.float(), p)
    else:
        _require_finite(exemplar, f"{name} (an IMAGE)", "check the node that made the image")
        if vae is None:
            raise NodeInputError(f"{NODE}: {name} is an IMAGE; connect the model's VAE to 'vae' "
                                 f"(or give the exemplar as a LATENT)")
        pixels = K.arrange(exemplar[..., :3].movedim(-1, 1).float(), p, unit=downscale).movedim(1, -1)
        patch = vae.encode(pixels.contiguous())
        if source.ndim == 5 and patch.ndim == 4:
            patch = patch.unsqueeze(2)
        elif source.ndim == 4 and patch.ndim == 5 and patch.shape[2] == 1:
            patch = patch[:, :, 0]
        patch = K.resize_last2(patch.float(), p.paste)
        _require_finite(patch, f"{name} encoded with the VAE", "check the VAE and the exemplar image")
    if patch.shape[1] != source.shape[1] or patch.ndim != source.ndim:
        raise NodeInputError(f"{NODE}: {name} has {patch.shape[1]} latent channels but the source has "
                             f"{source.shape[1]}; encode it with the same VAE as the source")
    if patch.ndim == 5 and patch.shape[2] != source.shape[2]:
        patch = patch[:, :, :1].expand(-1, -1, source.shape[2], -1, -1)
    try:
        return K.match_batch(patch, source.shape[0], name)
    except K.SurgeryError as e:
        raise NodeInputError(f"{NODE}: {e}") from None


def _require_finite(x: torch.Tensor, what: str, fix: str) -> None:
    """NaN or infinity would spread through sampling into every changed pixel: refuse it."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NodeInputError(f"{NODE}: {what} holds {bad} NaN or infinite value(s); {fix}")


def surgery(model, source, change_map, exemplars, vae=None, curve="linear", power=2.0, steepness=6.0):
    """The node's work, callable from tests: ``exemplars`` is a list of
    ``(exemplar or None, region MASK or None, placement)``; ``curve`` / ``power`` /
    ``steepness`` choose the pinning curve. Returns (model, latent, notes)."""
    for k, (_, _, mode) in enumerate(exemplars, start=1):
        if mode not in K.PLACEMENTS:
            raise NodeInputError(f"{NODE}: placement_{k} must be one of {', '.join(K.PLACEMENTS)}, "
                                 f"not {mode!r}")
    try:
        schedule = SurgerySchedule(curve, power, steepness)
    except K.SurgeryError as e:
        raise NodeInputError(f"{NODE}: {e}") from None
    try:
        family = detect_family(model, NODE)
    except UnsupportedModel as e:
        raise NodeInputError(str(e)) from None
    if not isinstance(source, dict) or not isinstance(source.get("samples"), torch.Tensor):
        raise NodeInputError(f"{NODE}: 'source' must be a LATENT")
    S = source["samples"]
    if S.ndim != family.latent_ndim:
        raise NodeInputError(f"{NODE}: the source latent is {S.ndim}-D but {family.label} latents are "
                             f"{family.latent_ndim}-D; encode the source with this model's VAE")
    if getattr(S, "is_nested", False):
        raise NodeInputError(f"{NODE}: nested (multi-part) latents are not supported")
    _require_finite(S, "the source latent", "encode the source image again (VAE Encode) or check the node "
                                            "that made the latent")
    notes: list[str] = []
    B = S.shape[0]
    hw = (S.shape[-2], S.shape[-1])
    ds = family.downscale
    C = _map_to_grid(change_map, hw, ds, "change_map", notes, B).to(S.device)

    layers = []
    used = []
    for k, (ex, region, mode) in enumerate(exemplars, start=1):
        if ex is None:
            if region is not None:
                notes.append(note(NODE, f"region_{k} is given without exemplar_{k}; it is ignored"))
            continue
        if region is None:
            r = torch.ones(B, *hw, dtype=torch.bool, device=S.device)
        else:
            r = _map_to_grid(region, hw, ds, f"region_{k}", notes, B).to(S.device) >= 0.5
        # one box per image: a batch may carry one region per image (each exemplar goes in its own
        # image's region, as when that image is edited alone)
        boxes = [K.bounding_box(r[b]) for b in range(r.shape[0])]
        if all(box is None for box in boxes):
            raise NodeInputError(f"{NODE}: region_{k} selects no pixel inside the "
                                 f"{hw[1] * ds}x{hw[0] * ds} source image (it is empty or lies outside "
                                 f"the image); paint the region on the source image")
        ex_hw = ex["samples"].shape[-2:] if isinstance(ex, dict) and "samples" in ex else \
            (ex.shape[1], ex.shape[2]) if isinstance(ex, torch.Tensor) and ex.ndim == 4 else None
        if ex_hw is None:
            raise NodeInputError(f"{NODE}: exemplar_{k} must be an IMAGE or a LATENT")
        ex_hw = tuple(int(v) for v in ex_hw)
        placed = torch.zeros_like(S, dtype=torch.float32)
        where = torch.zeros_like(r)
        for box in dict.fromkeys(b for b in boxes if b is not None):  # usually one box for the whole batch
            rows = [i for i, b in enumerate(boxes) if b == box]
            p = K.placement(ex_hw, box.hw, mode)
            patch = _exemplar_latent(ex, p, vae, ds, S, k).to(S.device)
            one, cover = K.paste(placed, patch, box, p)
            placed[rows], where[rows] = one[rows], r[rows] & cover
        for i, box in enumerate(boxes):
            if box is None:
                notes.append(note(NODE, f"region_{k} selects nothing in image {i + 1} of the batch; "
                                        f"exemplar_{k} is not placed there"))
        layers.append((placed, where))
        used.append(k)
    start, written = K.composite_start(S, layers, C)
    for k, n in zip(used, written):
        if n == 0:
            notes.append(note(NODE, f"exemplar_{k} has no effect: the change map is below 1 everywhere in "
                                    f"its region (the exemplar lands only where change = 1)"))
    if not used and bool((C > 0).any()):
        notes.append(note(NODE, "no exemplar is connected: the changed pixels are regenerated from the "
                                "source (plain differential regeneration)"))

    patched, replaced = patch_model(model, schedule)
    if replaced:
        notes.append(note(NODE, "the model already has a denoise-mask function (e.g. DifferentialDiffusion); "
                                "it is replaced by the surgery schedule, which is applied once per step"))
    mask_shape = (B, 1) + (1,) * (S.ndim - 4) + hw
    out = {k: v for k, v in source.items() if k != "noise_mask"}
    out["samples"] = start
    out["noise_mask"] = C.reshape(mask_shape).clone()
    return patched, out, notes

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
from comfy_api.latest import io, ui

from ..kernels import surgery as K
from .common import CATEGORY, NodeInputError, log, note
from .families import UnsupportedModel, detect_family

NODE = "ExemplarLatentSurgery"
MAP_NODE = "EditStrengthMap"
SLOTS = 3
WRAPPER_KEY = "precise_edit.exemplar_latent_surgery"


class SurgerySchedule:
    """Denoise-mask function: the binary mask ``1 - C > i / N`` for the current step.

    Called by ComfyUI's ``KSamplerX0Inpaint`` as ``fn(sigma, denoise_mask, extra_options)``
    with the LATENT's noise mask (the change map at latent size) and the sampler's sigmas.
    """

    def __call__(self, sigma, denoise_mask, extra_options):
        sigmas = extra_options["sigmas"]
        s = float(sigma.flatten()[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
        return K.free_mask(denoise_mask, s, sigmas)


SCHEDULE = SurgerySchedule()


def final_paste_wrapper(executor, noise, latent_image, sampler, sigmas, denoise_mask=None, *args, **kwargs):
    """``OUTER_SAMPLE`` wrapper: make sure the surgery schedule is the denoise-mask function
    of this run, sample, then copy the start latent back where the noise mask is 0."""
    import comfy.utils  # noqa: PLC0415

    guider = executor.class_obj
    options = getattr(guider, "model_options", None)
    if isinstance(options, dict) and not isinstance(options.get("denoise_mask_function"), SurgerySchedule):
        if options.get("denoise_mask_function") is not None:
            log.info("%s: another denoise-mask function (e.g. DifferentialDiffusion) was set after the "
                     "surgery; the surgery schedule 1 - C > i/N is used instead for this run", NODE)
        options["denoise_mask_function"] = SCHEDULE
    out = executor(noise, latent_image, sampler, sigmas, denoise_mask, *args, **kwargs)
    if denoise_mask is None or not isinstance(out, torch.Tensor) or out.shape != latent_image.shape:
        return out
    keep = comfy.utils.reshape_mask(denoise_mask.to(out.device), out.shape) == 0
    return torch.where(keep, latent_image.to(device=out.device, dtype=out.dtype), out)


def patch_model(model):
    """A clone of ``model`` with the surgery schedule and the final paste; returns it and
    whether another denoise-mask function was replaced."""
    import comfy.patcher_extension as pe  # noqa: PLC0415

    m = model.clone()
    previous = m.model_options.get("denoise_mask_function")
    replaced = previous is not None and not isinstance(previous, SurgerySchedule)
    m.set_model_denoise_mask_function(SCHEDULE)
    m.remove_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)  # chained surgeries: one paste
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, final_paste_wrapper)
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
    """The exemplar arranged by placement ``p``, as latent cells shaped like ``source``."""
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
        patch = K.arrange(x.float(), p)
    elif isinstance(exemplar, torch.Tensor) and exemplar.ndim == 4:
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
    else:
        raise NodeInputError(f"{NODE}: {name} must be an IMAGE or a LATENT")
    if patch.shape[1] != source.shape[1] or patch.ndim != source.ndim:
        raise NodeInputError(f"{NODE}: {name} has {patch.shape[1]} latent channels but the source has "
                             f"{source.shape[1]}; encode it with the same VAE as the source")
    if patch.ndim == 5 and patch.shape[2] != source.shape[2]:
        patch = patch[:, :, :1].expand(-1, -1, source.shape[2], -1, -1)
    try:
        return K.match_batch(patch, source.shape[0], name)
    except K.SurgeryError as e:
        raise NodeInputError(f"{NODE}: {e}") from None


def surgery(model, source, change_map, exemplars, vae=None):
    """The node's work, callable from tests: ``exemplars`` is a list of
    ``(exemplar or None, region MASK or None, placement)``. Returns (model, latent, notes)."""
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
        if mode not in K.PLACEMENTS:
            raise NodeInputError(f"{NODE}: placement_{k} must be one of {', '.join(K.PLACEMENTS)}")
        if region is None:
            r = torch.ones(B, *hw, dtype=torch.bool, device=S.device)
        else:
            r = _map_to_grid(region, hw, ds, f"region_{k}", notes, B).to(S.device) >= 0.5
        box = K.bounding_box(r)
        if box is None:
            raise NodeInputError(f"{NODE}: region_{k} selects no pixel inside the "
                                 f"{hw[1] * ds}x{hw[0] * ds} source image (it is empty or lies outside "
                                 f"the image); paint the region on the source image")
        ex_hw = ex["samples"].shape[-2:] if isinstance(ex, dict) and "samples" in ex else \
            (ex.shape[1], ex.shape[2]) if isinstance(ex, torch.Tensor) and ex.ndim == 4 else None
        if ex_hw is None:
            raise NodeInputError(f"{NODE}: exemplar_{k} must be an IMAGE or a LATENT")
        p = K.placement(tuple(int(v) for v in ex_hw), box.hw, mode)
        patch = _exemplar_latent(ex, p, vae, ds, S, k).to(S.device)
        placed, cover = K.paste(torch.zeros_like(S, dtype=torch.float32), patch, box, p)
        layers.append((placed, r & cover.unsqueeze(0)))
        used.append(k)
    start, written = K.composite_start(S, layers, C)
    for k, n in zip(used, written):
        if n == 0:
            notes.append(note(NODE, f"exemplar_{k} has no effect: the change map is below 1 everywhere in "
                                    f"its region (the exemplar lands only where change = 1)"))
    if not used and bool((C > 0).any()):
        notes.append(note(NODE, "no exemplar is connected: the changed pixels are regenerated from the "
                                "source (plain differential regeneration)"))

    patched, replaced = patch_model(model)
    if replaced:
        notes.append(note(NODE, "the model already has a denoise-mask function (e.g. DifferentialDiffusion); "
                                "it is replaced by the surgery schedule, which is applied once per step"))
    mask_shape = (B, 1) + (1,) * (S.ndim - 4) + hw
    out = {k: v for k, v in source.items() if k != "noise_mask"}
    out["samples"] = start
    out["noise_mask"] = C.reshape(mask_shape).clone()
    return patched, out, notes


def _exemplar_inputs(k: int) -> list:
    return [
        io.MultiType.Input(f"exemplar_{k}", types=[io.Image, io.Latent], optional=True,
                           tooltip=f"Exemplar {k}: an IMAGE (encoded with 'vae') or a LATENT. It is placed "
                                   f"into the bounding box of region_{k} and lands where the change map is 1."),
        io.Mask.Input(f"region_{k}", optional=True,
                      tooltip=f"Where exemplar {k} goes (1 = region), painted on the source image. Its "
                              f"bounding box receives the exemplar. Not connected: the whole image."),
    ]


class ExemplarLatentSurgery(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Exemplar Latent Surgery",
            category=CATEGORY,
            description=(
                "Edit an image with exemplar images instead of words (PIXELS latent surgery). The change "
                "map sets per pixel how much changes: 1 (white) = take the exemplar and regenerate "
                "freely, 0 (black) = keep the source bit-exact, in between = held to the source for the "
                "first (1 - change) of the steps. Feed the MODEL and LATENT outputs to a standard "
                "KSampler or SamplerCustomAdvanced (denoise below 1, e.g. 0.6, keeps the exemplar's "
                "layout). Chain surgeries for progressive edits. Works with SD1.5, SDXL, FLUX and "
                "Qwen-Image."),
            inputs=[
                io.Model.Input("model", tooltip="The model that samples the edit; it is cloned and patched "
                                                "(the input model is unchanged)."),
                io.Latent.Input("source", tooltip="The source image's latent (VAE Encode), or the output of "
                                                  "a previous surgery's sampler for progressive edits."),
                io.Mask.Input("change_map", tooltip="How much each pixel changes: 1 (white) = change, 0 "
                                                    "(black) = keep exactly. Values are clamped to [0, 1]; "
                                                    "another size than the image is resized."),
                io.Combo.Input("placement_1", options=list(K.PLACEMENTS), default="fit",
                               tooltip="How exemplar 1 fills its region's bounding box: fit (whole exemplar, "
                                       "aspect kept, centred), fill (aspect kept, covers the box, centre "
                                       "crop) or stretch (to the box)."),
                io.Combo.Input("placement_2", options=list(K.PLACEMENTS), default="fit",
                               tooltip="How exemplar 2 fills its region's bounding box (fit / fill / stretch)."),
                io.Combo.Input("placement_3", options=list(K.PLACEMENTS), default="fit",
                               tooltip="How exemplar 3 fills its region's bounding box (fit / fill / stretch)."),
                io.Vae.Input("vae", optional=True, tooltip="The model's VAE; needed when an exemplar is an "
                                                           "IMAGE."),
                *[inp for k in range(1, SLOTS + 1) for inp in _exemplar_inputs(k)],
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model patched with the surgery schedule "
                                                              "(pin where 1 - change > step / steps) and the "
                                                              "final paste of kept pixels. Use it in the sampler."),
                io.Latent.Output(display_name="latent", tooltip="Start latent: exemplars where change = 1, the "
                                                                "source elsewhere, with the change map as its "
                                                                "noise mask. Use it as the sampler's latent."),
            ],
        )

    @classmethod
    def execute(cls, model, source, change_map, placement_1="fit", placement_2="fit", placement_3="fit",
                vae=None, exemplar_1=None, region_1=None, exemplar_2=None, region_2=None,
                exemplar_3=None, region_3=None) -> io.NodeOutput:
        exemplars = [(exemplar_1, region_1, placement_1), (exemplar_2, region_2, placement_2),
                     (exemplar_3, region_3, placement_3)]
        patched, latent, notes = surgery(model, source, change_map, exemplars, vae=vae)
        C = latent["noise_mask"]
        lines = [f"change map: mean {float(C.mean()):.3f}, kept (0) {100 * float((C == 0).float().mean()):.1f}%, "
                 f"full change (1) {100 * float((C == 1).float().mean()):.1f}%"] + notes
        return io.NodeOutput(patched, latent, ui={"text": ("\n".join(lines),)})


class EditStrengthMap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=MAP_NODE,
            display_name="Edit Strength Map",
            category=CATEGORY,
            description=(
                "Builds a change map for Exemplar Latent Surgery (1 = change, 0 = keep): a mask with a "
                "feathered edge, a linear or radial gradient, and combinations of them (max / min / "
                "multiply), scaled by strength. Outputs the MASK and a grey preview (white = change)."),
            inputs=[
                io.Int.Input("width", default=1024, min=8, max=16384, step=8,
                             tooltip="Map width in pixels when no mask is connected (else the mask's)."),
                io.Int.Input("height", default=1024, min=8, max=16384, step=8,
                             tooltip="Map height in pixels when no mask is connected (else the mask's)."),
                io.Int.Input("feather", default=0, min=0, max=1024,
                             tooltip="Feather radius in pixels for the mask: its edge becomes a linear ramp "
                                     "about 2 x feather + 1 pixels wide (see feather_edge). 0 = hard edge."),
                io.Combo.Input("feather_edge", options=["outside", "centred"], default="outside",
                               tooltip="outside: the mask stays fully 1 (the exemplar keeps its whole region) "
                                       "and fades to 0 over about 2 x feather pixels beyond it; centred: the "
                                       "ramp is centred on the mask's edge."),
                io.Combo.Input("gradient", options=["none", "linear", "radial"], default="none",
                               tooltip="Add a gradient: linear (along 'angle', from 'start' to 'end') or "
                                       "radial (1 inside inner_radius, 0 beyond outer_radius)."),
                io.Float.Input("angle", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="Linear gradient direction in degrees: 0 = left to right, 90 = top to "
                                       "bottom."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Linear gradient: where it starts rising from 0 (fraction of the "
                                       "image along the direction)."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Linear gradient: where it reaches 1 (fraction along the direction)."),
                io.Float.Input("center_x", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Radial gradient centre, fraction of the width."),
                io.Float.Input("center_y", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Radial gradient centre, fraction of the height."),
                io.Float.Input("inner_radius", default=0.2, min=0.0, max=4.0, step=0.01,
                               tooltip="Radial gradient: full change (1) within this radius, a fraction of "
                                       "the shorter side."),
                io.Float.Input("outer_radius", default=0.5, min=0.0, max=4.0, step=0.01,
                               tooltip="Radial gradient: no change (0) beyond this radius, a fraction of the "
                                       "shorter side."),
                io.Combo.Input("combine", options=list(K.COMBINE_OPS), default="max",
                               tooltip="How the parts (feathered mask, gradient, combine_with) are joined: max "
                                       "(union), min (intersection) or multiply."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Multiplies the combined map (e.g. 0.5: at most half the steps change)."),
                io.Boolean.Input("invert", default=False,
                                 tooltip="Use 1 - map (for masks painted with white = keep)."),
                io.Mask.Input("mask", optional=True, tooltip="Region to change (1 = change), feathered by "
                                                             "'feather'. Values are clamped to [0, 1]."),
                io.Mask.Input("combine_with", optional=True,
                              tooltip="Another change map to combine (e.g. a previous Edit Strength Map); "
                                      "resized to this map's size if it differs."),
            ],
            outputs=[
                io.Mask.Output(display_name="change_map", tooltip="The change map: 1 = change, 0 = keep."),
                io.Image.Output(display_name="preview", tooltip="The change map as a grey image (white = "
                                                                "change)."),
            ],
        )

    @classmethod
    def execute(cls, width=1024, height=1024, feather=0, feather_edge="outside", gradient="none", angle=0.0,
                start=0.0, end=1.0, center_x=0.5, center_y=0.5, inner_radius=0.2, outer_radius=0.5, combine="max",
                strength=1.0, invert=False, mask=None, combine_with=None) -> io.NodeOutput:
        result, notes = strength_map(width, height, feather, gradient, angle, start, end, center_x, center_y,
                                     inner_radius, outer_radius, combine, strength, invert, mask, combine_with,
                                     feather_edge=feather_edge)
        preview = K.map_preview(result)
        out_ui = ui.PreviewImage(preview, cls=cls).as_dict()
        if notes:
            out_ui["text"] = ("\n".join(notes),)
        return io.NodeOutput(result, preview, ui=out_ui)


def strength_map(width, height, feather, gradient, angle, start, end, center_x, center_y, inner_radius,
                 outer_radius, combine, strength, invert, mask=None, combine_with=None, feather_edge="centred"):
    """EditStrengthMap's work: (map ``[B, H, W]``, notes)."""
    notes = []
    parts = []
    hw = (int(height), int(width))

    def load(m, what):
        try:
            b = K.as_map_batch(m)
        except K.SurgeryError as e:
            raise NodeInputError(f"{MAP_NODE}: {what}: {e}") from None
        b, clamped = K.clamp_unit(b)
        if clamped:
            notes.append(note(MAP_NODE, f"{what} has values outside [0, 1]; they are clamped"))
        return b

    if mask is not None:
        m = load(mask, "mask")
        hw = tuple(m.shape[-2:])
        if feather_edge not in ("outside", "centred"):
            raise NodeInputError(f"{MAP_NODE}: feather_edge must be outside or centred")
        parts.append(K.grow_feather(m, feather) if feather_edge == "outside" else K.box_feather(m, feather))
    elif feather:
        notes.append(note(MAP_NODE, "feather needs a mask; it is ignored"))
    if gradient == "linear":
        parts.append(K.linear_gradient(hw, angle, start, end).unsqueeze(0))
    elif gradient == "radial":
        parts.append(K.radial_gradient(hw, center_x, center_y, inner_radius, outer_radius).unsqueeze(0))
    elif gradient != "none":
        raise NodeInputError(f"{MAP_NODE}: gradient must be none, linear or radial")
    if combine_with is not None:
        c = load(combine_with, "combine_with")
        if tuple(c.shape[-2:]) != hw:
            notes.append(note(MAP_NODE, f"combine_with is {c.shape[-1]}x{c.shape[-2]} but the map is "
                                        f"{hw[1]}x{hw[0]}; it is resized"))
            c = K.resize_map(c, hw).clamp(0.0, 1.0)
        parts.append(c)
    if not parts:
        raise NodeInputError(f"{MAP_NODE}: nothing to build the map from; connect a mask or combine_with, "
                             f"or choose a linear or radial gradient")
    batch = max(p.shape[0] for p in parts)
    try:
        parts = [K.match_batch(p, batch, "a part of the map") for p in parts]
        out = K.combine(parts, combine)
    except K.SurgeryError as e:
        raise NodeInputError(f"{MAP_NODE}: {e}") from None
    if strength != 1.0:
        out = out * float(strength)
    if invert:
        out = 1.0 - out
    return out.clamp(0.0, 1.0).contiguous(), notes

"""PIXELS node schemas: ExemplarLatentSurgery and EditStrengthMap (what runs while sampling is in
``patch.py``, the math in ``kernels/surgery.py``)."""
from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ...kernels import surgery as K
from ..common import CATEGORY, NodeInputError, note
from .patch import NODE, MAP_NODE, SLOTS, surgery


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
                io.Combo.Input("pinning_curve", options=list(K.PIN_CURVES), default="linear",
                               tooltip="When a partly changed pixel is released from the source. A pixel is "
                                       "held while 1 - change > t at step i of N: linear t = i/N (the "
                                       "paper's schedule), power t = (i/N)^curve_power (released later, the "
                                       "source is kept longer), sigmoid t = sigmoid(curve_steepness (i/N - "
                                       "0.5)) (released mostly mid-way). Change 0 and 1 behave the same "
                                       "under every curve."),
                io.Float.Input("curve_power", default=2.0, min=0.1, max=10.0, step=0.1,
                               tooltip="Exponent p of the power curve (the authors' code sketches 2 and 3); "
                                       "only used with pinning_curve = power."),
                io.Float.Input("curve_steepness", default=6.0, min=0.5, max=50.0, step=0.5,
                               tooltip="Steepness k of the sigmoid curve (the authors' code sketches 6); "
                                       "only used with pinning_curve = sigmoid."),
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
                pinning_curve="linear", curve_power=2.0, curve_steepness=6.0, vae=None, exemplar_1=None, region_1=None, exemplar_2=None, region_2=None,
                exemplar_3=None, region_3=None) -> io.NodeOutput:
        exemplars = [(exemplar_1, region_1, placement_1), (exemplar_2, region_2, placement_2),
                     (exemplar_3, region_3, placement_3)]
        patched, latent, notes = surgery(model, source, change_map, exemplars, vae=vae, curve=pinning_curve,
                                         power=curve_power, steepness=curve_steepness)
        C = latent["noise_mask"]
        curve = {"linear": "t = i/N", "power": f"t = (i/N)^{curve_power:g}",
                 "sigmoid": f"t = sigmoid({curve_steepness:g} (i/N - 0.5))"}[pinning_curve]
        lines = [f"pinning: held while 1 - change > {curve}",f"change map: mean {float(C.mean()):.3f}, kept (0) {100 * float((C == 0).float().mean()):.1f}%, "
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
    for name, value, allowed in (("feather_edge", feather_edge, ("outside", "centred")),
                                 ("gradient", gradient, ("none", "linear", "radial")),
                                 ("combine", combine, K.COMBINE_OPS)):
        if value not in allowed:
            raise NodeInputError(f"{MAP_NODE}: {name} must be one of {', '.join(allowed)}, not {value!r}")

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

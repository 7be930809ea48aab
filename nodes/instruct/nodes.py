"""Instruction editing nodes: SpatialInstruction, MoveObject and InstructGuider (schemas and input
checks; the guider's sampling is in ``guider.py``, the move in ``move.py``, the phrase and guidance
math in ``kernels/spatial.py`` and ``kernels/guidance.py``)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ...kernels import detail as DT
from ...kernels import guidance as G
from ...kernels import spatial as SP
from ...kernels import surgery as K
from ..common import CATEGORY, NodeInputError, note
from ..families import UnsupportedModel, detect_family
from .guider import NODE as GUIDER_NODE
from .guider import Plan, ScaleSpec, make_guider
from .move import NODE as MOVE_NODE
from .move import move_object, shift_cells

INSTRUCT_CATEGORY = f"{CATEGORY}/instruct"
SPATIAL_NODE = "SpatialInstruction"
LANGUAGES = ["auto", *SP.available_languages()]
TEXT_MODES = ("fixed", "from instruction")


def _combo(node: str, name: str, value, options) -> None:
    """ComfyUI 0.3.75 does not check V3 combo values: do it here."""
    if value not in options:
        raise NodeInputError(f"{node}: {name} must be one of {', '.join(map(str, options))} (got '{value}')")


def spatial_instruction(instruction, language="auto", width=1024, height=1024, feather=8, image=None,
                        object_mask=None):
    """SpatialInstruction's work: (region [1, H, W], instruction, offset_x, offset_y, understood, notes)."""
    _combo(SPATIAL_NODE, "language", language, LANGUAGES)
    if image is not None:
        height, width = int(image.shape[1]), int(image.shape[2])
    elif object_mask is not None:
        height, width = int(object_mask.shape[-2]), int(object_mask.shape[-1])
    obj_box, obj = None, None
    if object_mask is not None:
        try:
            obj = K.as_map_batch(object_mask)
        except K.SurgeryError as e:
            raise NodeInputError(f"{SPATIAL_NODE}: object_mask: {e}") from None
        obj = K.resize_map(obj, (height, width)).amax(0)
        obj_box = SP.box_of_mask(obj)
        if obj_box is None:
            raise NodeInputError(f"{SPATIAL_NODE}: object_mask is empty; paint the object it refers to")
    try:
        p = SP.parse(instruction, language, object_box=obj_box, image_size=(width, height))
    except SP.SpatialError as e:
        raise NodeInputError(f"{SPATIAL_NODE}: {e}") from None
    notes = [note(SPATIAL_NODE, n) for n in p.notes]
    if p.kind == "move":
        if obj is not None:
            dx, dy = round(p.offset[0] * width), round(p.offset[1] * height)
            region = shift_cells((obj >= 0.5).float(), dy, dx)
        else:
            region = torch.zeros(height, width)
            notes.append(note(SPATIAL_NODE, "a move: connect 'object_mask' to get the object's new place as the "
                                            "region; the offsets are output either way"))
    else:
        region = SP.boxes_mask(p.boxes, height, width)
        if p.kind == "none":
            notes.append(note(SPATIAL_NODE, "no spatial phrase understood: the instruction passes through "
                                            "unchanged and the region is empty"))
    region = K.box_feather(region[None], int(feather)) if feather else region[None]
    return region.clamp(0, 1), p.text, float(p.offset[0]), float(p.offset[1]), p.describe(), notes


class SpatialInstruction(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=SPATIAL_NODE, display_name="Spatial Instruction", category=INSTRUCT_CATEGORY,
            description=(
                "Reads where an edit instruction points: absolute places (corners, halves, thirds, edges, centre, "
                "'top left quarter'), places relative to an object (above / below / left of / right of / next to, "
                "with its mask), sizes ('small', 'large') and moves ('move it 10% to the right'). English and "
                "Vietnamese (phrase tables in kernels/data/spatial_<lang>.json). Outputs the place as a soft MASK "
                "for KV-Edit, SpotSelector or Exemplar Latent Surgery, the instruction without the spatial "
                "phrase, and a move's offsets for Move Object. An instruction without a spatial phrase passes "
                "through unchanged with an empty region."),
            inputs=[
                io.String.Input("instruction", multiline=True, default="add a small tree in the bottom right corner",
                                tooltip="The edit instruction, e.g. 'add a tree in the bottom right corner', 'put a "
                                        "lamp next to the sofa', 'move it 10% to the right', 'thêm một cái cây ở "
                                        "góc dưới bên phải'."),
                io.Combo.Input("language", options=LANGUAGES, default="auto",
                               tooltip="Phrase table to read with; auto picks the one that understands most."),
                io.Int.Input("width", default=1024, min=8, max=16384, step=8,
                             tooltip="Region width in pixels when no image or object mask is connected."),
                io.Int.Input("height", default=1024, min=8, max=16384, step=8,
                             tooltip="Region height in pixels when no image or object mask is connected."),
                io.Int.Input("feather", default=8, min=0, max=1024,
                             tooltip="Soft edge of the region in pixels (a ramp centred on the edge; the 0.5 level "
                                     "stays on the place's border). 0 = hard edge."),
                io.Image.Input("image", optional=True, tooltip="The image being edited (gives the region's size)."),
                io.Mask.Input("object_mask", optional=True,
                              tooltip="The object the instruction refers to ('next to the sofa', 'move it left'): "
                                      "needed for relative places and moves to a place; with a move, the region "
                                      "output is the object's new place."),
            ],
            outputs=[
                io.Mask.Output(display_name="region", tooltip="Where the edit goes (1 = edit), soft edge."),
                io.String.Output(display_name="instruction", tooltip="The instruction without its spatial phrase: "
                                                                     "what the model should do there."),
                io.Float.Output(display_name="offset_x", tooltip="A move's horizontal offset, fraction of the "
                                                                 "width (+ = right); 0 if no move."),
                io.Float.Output(display_name="offset_y", tooltip="A move's vertical offset, fraction of the "
                                                                 "height (+ = down); 0 if no move."),
                io.String.Output(display_name="understood", tooltip="What was understood, in words."),
            ],
        )

    @classmethod
    def execute(cls, instruction, language="auto", width=1024, height=1024, feather=8, image=None,
                object_mask=None) -> io.NodeOutput:
        region, text, dx, dy, understood, notes = spatial_instruction(instruction, language, width, height, feather,
                                                                       image, object_mask)
        shown = "\n".join([understood] + notes)
        return io.NodeOutput(region, text, dx, dy, understood, ui={"text": (shown,)})


class MoveObject(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=MOVE_NODE, display_name="Move Object", category=INSTRUCT_CATEGORY,
            description=(
                "Moves an object with Exemplar Latent Surgery: the object cut from the source is the exemplar at "
                "its new place; the change map covers the old and new places (feathered) so the old place is "
                "regenerated and the object harmonised at the new one; everything else stays bit-exact. Wire "
                "exemplar -> exemplar_1, region -> region_1, fill -> exemplar_2, fill_region -> region_2 and "
                "change_map -> change_map of Exemplar Latent Surgery (placement 'stretch'). Works with any model "
                "the surgery supports."),
            inputs=[
                io.MultiType.Input("source", types=[io.Latent, io.Image],
                                   tooltip="The source image's LATENT (VAE Encode), or the IMAGE with 'vae'."),
                io.Mask.Input("object_mask", tooltip="The object to move (1 = object), painted on the source."),
                io.Float.Input("offset_x", default=0.1, min=-1.0, max=1.0, step=0.01,
                               tooltip="Horizontal move, fraction of the width (+ = right); from Spatial Instruction "
                                       "or typed. A move past the border is clipped (with a notice); one that "
                                       "leaves the image entirely is an error."),
                io.Float.Input("offset_y", default=0.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="Vertical move, fraction of the height (+ = down)."),
                io.Int.Input("feather", default=16, min=0, max=1024,
                             tooltip="The change map fades out over about 2 x feather pixels around the old and new "
                                     "places (they stay fully 1)."),
                io.Vae.Input("vae", optional=True, tooltip="Needed when 'source' is an IMAGE."),
            ],
            outputs=[
                io.Latent.Output(display_name="exemplar", tooltip="The object cut from the source latent -> "
                                                                  "exemplar_1."),
                io.Mask.Output(display_name="region", tooltip="The object's new place -> region_1."),
                io.Latent.Output(display_name="fill", tooltip="A neutral fill (the mean around the object) for the "
                                                              "old place -> exemplar_2."),
                io.Mask.Output(display_name="fill_region", tooltip="The old place not covered by the new one -> "
                                                                   "region_2."),
                io.Mask.Output(display_name="change_map", tooltip="Old U new place, feathered -> change_map."),
            ],
        )

    @classmethod
    def execute(cls, source, object_mask, offset_x=0.1, offset_y=0.0, feather=16, vae=None) -> io.NodeOutput:
        ex, region, fill, fill_region, change, notes = move_object(source, object_mask, offset_x, offset_y, feather,
                                                                   vae)
        return io.NodeOutput(ex, region, fill, fill_region, change, ui={"text": ("\n".join(notes),)})


def _scale_inputs(prefix: str, default: float, end: float, what: str) -> list:
    return [
        io.Float.Input(f"{prefix}_scale", default=default, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip=f"{what} scale (at the first step for linear / cosine)."),
        io.Combo.Input(f"{prefix}_schedule", options=list(G.SCHEDULES), default="constant",
                       tooltip=f"How the {what.lower()} scale changes over the steps: constant, linear or cosine "
                               f"from {prefix}_scale to {prefix}_scale_end, or list: one value per step from "
                               f"{prefix}_values."),
        io.Float.Input(f"{prefix}_scale_end", default=end, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip=f"{what} scale at the last step (linear / cosine schedules)."),
        io.String.Input(f"{prefix}_values", default="", multiline=False,
                        tooltip=f"For the list schedule: one {what.lower()} scale per sampling step, separated by "
                                f"commas or spaces (exactly as many as steps)."),
    ]


def _cross_width(cond) -> int | None:
    try:
        return int(cond[0][0].shape[-1])
    except (TypeError, IndexError, AttributeError):
        return None


def instruct_guider(model, positive, negative, image_only=None, negative_instruction=None, text_scale=7.5,
                    text_schedule="constant", text_scale_end=7.5, text_values="", image_scale=1.5,
                    image_schedule="constant", image_scale_end=1.5, image_values="", text_scale_mode="fixed",
                    instruction="", text_scale_min=4.0, text_scale_max=12.0, negative_scale=1.0, dng_prior=0.2,
                    dng_temperature=1.0, dng_offset=0.0, dng_p_max=0.99):
    """InstructGuider's work: (guider, notes)."""
    node = GUIDER_NODE
    _combo(node, "text_schedule", text_schedule, G.SCHEDULES)
    _combo(node, "image_schedule", image_schedule, G.SCHEDULES)
    _combo(node, "text_scale_mode", text_scale_mode, TEXT_MODES)
    notes = []
    try:
        family = detect_family(model, node)
    except UnsupportedModel as e:
        raise NodeInputError(str(e)) from None
    if text_scale_mode == "from instruction":
        if text_schedule == "list":
            raise NodeInputError(f"{node}: text_scale_mode 'from instruction' sets the text scale, but "
                                 f"text_schedule 'list' uses text_values instead; choose another text_schedule "
                                 f"(constant, linear, cosine) or set text_scale_mode to '{TEXT_MODES[0]}'")
        if not isinstance(instruction, str) or not instruction.strip():
            raise NodeInputError(f"{node}: text_scale_mode 'from instruction' needs the instruction text; connect "
                                 f"it to 'instruction' (e.g. from Spatial Instruction's input)")
        try:
            d = DT.detail(instruction)
            s = DT.detail_strength(d)
            text_scale = G.scale_from_strength(s, text_scale_min, text_scale_max)
        except (SP.SpatialError, G.GuidanceError) as e:
            raise NodeInputError(f"{node}: {e}") from None
        notes.append(f"{node}: instruction detail {d.objects} object(s), {d.attributes} attribute(s), "
                     f"{d.relations} spatial relation(s) -> strength {s:.2f} -> text scale {text_scale:.2f}")
    dng = None
    if negative_instruction is not None:
        wn, wp = _cross_width(negative_instruction), _cross_width(positive)
        if wn is None or wp is None or wn != wp:
            raise NodeInputError(
                f"{node}: this model ({family.label}) cannot take negative_instruction: its text conditioning is "
                f"{wn}-wide but the positive's is {wp}-wide; encode the negative instruction with the same text "
                f"encoder (and, for Kontext / Qwen-Image-Edit, the same reference image) as the positive")
        dng = G.DNGSettings(scale=negative_scale, prior=dng_prior, temperature=dng_temperature, offset=dng_offset,
                            p_max=dng_p_max)
        try:
            dng.check()
        except G.GuidanceError as e:
            raise NodeInputError(f"{node}: {e}") from None
    if image_only is None:
        notes.append(f"{node}: no image_only condition: true CFG between positive and negative with the text scale; "
                     f"the image scale is not used")
    for prefix, kind, values in (("text", text_schedule, text_values), ("image", image_schedule, image_values)):
        if kind == "list":
            try:
                G.parse_values(values)
            except G.GuidanceError as e:
                raise NodeInputError(f"{node}: {prefix}_values: {e}") from None
            if not G.parse_values(values):
                raise NodeInputError(f"{node}: {prefix}_schedule is 'list' but {prefix}_values is empty; give one "
                                     f"value per sampling step")
    plan = Plan(ScaleSpec("text", text_schedule, text_scale, text_scale_end, text_values),
                ScaleSpec("image", image_schedule, image_scale, image_scale_end, image_values), dng, notes)
    return make_guider(model, positive, negative, plan, image_only=image_only,
                       negative_instruction=negative_instruction), notes


class InstructGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=GUIDER_NODE, display_name="Instruct Guider", category=INSTRUCT_CATEGORY,
            description=(
                "Guidance for instruction editing (a GUIDER for SamplerCustomAdvanced). InstructPix2Pix's two "
                "scales: image (image-only vs nothing) and text (instruction vs image-only), equal to "
                "DualCFGGuider for constant scales, each with a per-step schedule. Without image_only it is true "
                "CFG (positive vs negative), e.g. for FLUX.1 Kontext and Qwen-Image-Edit. The text scale can "
                "follow the instruction's detail, and a negative instruction ('no blur') is pushed away with "
                "dynamic negative guidance (its scale follows the posterior that the image shows it, Koulischer "
                "et al. 2025). All conditions run in one batched model call where ComfyUI allows."),
            inputs=[
                io.Model.Input("model", tooltip="The editing model (InstructPix2Pix-type UNet, FLUX.1 Kontext, "
                                                "Qwen-Image-Edit)."),
                io.Conditioning.Input("positive", tooltip="The instruction with the image (InstructPix2Pix: "
                                                          "InstructPixToPixConditioning's positive; Kontext: "
                                                          "text + ReferenceLatent)."),
                io.Conditioning.Input("negative", tooltip="Neither instruction nor image (InstructPix2Pix's "
                                                          "negative), or the negative prompt for true CFG."),
                *_scale_inputs("text", 7.5, 7.5, "Text"),
                *_scale_inputs("image", 1.5, 1.5, "Image"),
                io.Combo.Input("text_scale_mode", options=list(TEXT_MODES), default="fixed",
                               tooltip="fixed: text_scale as set; from instruction: text_scale = text_scale_min + "
                                       "(max - min) x detail, where detail = min(objects + attributes + spatial "
                                       "relations, 8) / 8 counted in 'instruction' (schedules then start there)."),
                io.String.Input("instruction", default="", multiline=False,
                                tooltip="The instruction text, for text_scale_mode 'from instruction'."),
                io.Float.Input("text_scale_min", default=4.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Text scale of the least detailed instruction (from instruction mode)."),
                io.Float.Input("text_scale_max", default=12.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Text scale of the most detailed instruction (from instruction mode)."),
                io.Float.Input("negative_scale", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Dynamic negative guidance lambda: the negative scale is lambda p / (1 - p) "
                                       "with p the posterior that the image shows the negative instruction."),
                io.Float.Input("dng_prior", default=0.2, min=0.0001, max=0.9999, step=0.01,
                               tooltip="Posterior at the first step."),
                io.Float.Input("dng_temperature", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Temperature of the posterior update (higher reacts faster)."),
                io.Float.Input("dng_offset", default=0.0, min=-100.0, max=100.0, step=0.0001,
                               tooltip="Bias added in the posterior update (the authors' offset)."),
                io.Float.Input("dng_p_max", default=0.99, min=0.01, max=0.9999, step=0.01,
                               tooltip="Upper clamp of the posterior (bounds the negative scale)."),
                io.Conditioning.Input("image_only", optional=True,
                                      tooltip="The image without the instruction (InstructPix2Pix: the negative "
                                              "conditioning with the image; Kontext / Qwen-Image-Edit: empty text "
                                              "+ ReferenceLatent). Enables the image scale."),
                io.Conditioning.Input("negative_instruction", optional=True,
                                      tooltip="What must not happen ('do not change the face', 'no blur'), encoded "
                                              "like the positive (same image). Enables dynamic negative guidance."),
            ],
            outputs=[io.Guider.Output(tooltip="For SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, text_scale=7.5, text_schedule="constant", text_scale_end=7.5,
                text_values="", image_scale=1.5, image_schedule="constant", image_scale_end=1.5, image_values="",
                text_scale_mode="fixed", instruction="", text_scale_min=4.0, text_scale_max=12.0, negative_scale=1.0,
                dng_prior=0.2, dng_temperature=1.0, dng_offset=0.0, dng_p_max=0.99, image_only=None,
                negative_instruction=None) -> io.NodeOutput:
        guider, notes = instruct_guider(model, positive, negative, image_only, negative_instruction, text_scale,
                                        text_schedule, text_scale_end, text_values, image_scale, image_schedule,
                                        image_scale_end, image_values, text_scale_mode, instruction, text_scale_min,
                                        text_scale_max, negative_scale, dng_prior, dng_temperature, dng_offset,
                                        dng_p_max)
        return io.NodeOutput(guider, ui={"text": ("\n".join(notes),)} if notes else None)


NODES = [SpatialInstruction, MoveObject, InstructGuider]

"""EditMetrics: the PIE-Bench metric set for a source, an edit and its mask, inside ComfyUI."""
from __future__ import annotations

import json

import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageDraw, ImageFont

from ..common import CATEGORY, NodeInputError, note
from . import measure, models

NODE = "EditMetrics"
EditMetricsType = io.Custom("EDIT_METRICS")
LOWER_IS_BETTER = {"structure_distance", "lpips_unedit_part", "mse_unedit_part", "lpips_edit_part", "mse_edit_part"}


def dino_options() -> list[str]:
    files = models.list_files("dino")
    return files or [models.DINO_DEFAULT]


def format_value(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if v == float("inf"):
        return "inf"
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"


def table_image(rows: list[dict], width: int = 760) -> torch.Tensor:
    """A readable table ``[1, H, W, 3]``: one line per metric, one column per image of the batch."""
    font = ImageFont.load_default()
    names = list(measure.METRICS)
    line_h, pad = 18, 10
    notes = sorted({n for r in rows for n in r["notes"]})
    height = pad * 2 + line_h * (len(names) + 2 + len(notes))
    col_w = max(90, (width - 330) // max(1, len(rows)))
    width = max(width, 330 + col_w * len(rows))
    img = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    y = pad
    draw.text((pad, y), f"metric (mask: {rows[0]['mask_convention']})", fill=(0, 0, 0), font=font)
    for j in range(len(rows)):
        draw.text((330 + j * col_w, y), f"image {j}", fill=(0, 0, 0), font=font)
    y += line_h
    for k, name in enumerate(names):
        if k % 2 == 0:
            draw.rectangle([0, y - 2, width, y + line_h - 4], fill=(236, 240, 246))
        arrow = " (lower better)" if name in LOWER_IS_BETTER else ""
        draw.text((pad, y), name + arrow, fill=(0, 0, 0), font=font)
        for j, r in enumerate(rows):
            v = r["metrics"].get(name)
            draw.text((330 + j * col_w, y), format_value(v), fill=(0, 0, 0) if v is not None else (150, 150, 150),
                      font=font)
        y += line_h
    y += line_h // 2
    for n in notes:
        draw.text((pad, y), n[:160], fill=(140, 60, 0), font=font)
        y += line_h
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


class EditMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Edit Metrics (PIE-Bench)",
            category=CATEGORY + "/evaluation",
            description=(
                "Measures an edit the way PIE-Bench does (PnPInversion's evaluation code): structure "
                "distance (DINO ViT key self-similarity), PSNR / LPIPS / MSE / SSIM on the unedited part "
                "(image * (1 - mask)) and on the edited part (image * mask), and CLIP similarity of the "
                "whole edit and of its edited region to the target text. Images are measured as 8-bit "
                "PNGs hold them. A metric without its model file or without pixels to measure is 'n/a'."),
            is_output_node=True,
            inputs=[
                io.Image.Input("source", tooltip="The image before the edit (a batch is measured per image)."),
                io.Image.Input("edited", tooltip="The edited image; another size is resized to the source's "
                                                 "size (bicubic) with a note."),
                io.Mask.Input("mask", tooltip="The edited region: 1 = edited. Another size is resized (nearest)."),
                io.Combo.Input("mask_convention", options=list(measure.MASK_CONVENTIONS),
                               default="pie-bench border",
                               tooltip="'pie-bench border': the outer one-pixel frame counts as edited, as "
                                       "PIE-Bench's mask decoding does; 'as given': the mask unchanged."),
                io.String.Input("target_text", default="", multiline=True,
                                tooltip="The editing (target) prompt, for the CLIP similarities."),
                io.String.Input("source_text", default="", multiline=True, optional=True,
                                tooltip="The original prompt, for the source image's CLIP similarity."),
                io.Combo.Input("lpips_net", options=list(models.LPIPS_BACKBONES), default="squeeze",
                               tooltip="LPIPS backbone (PIE-Bench: squeeze); its torchvision weights come "
                                       "from models/lpips."),
                io.Combo.Input("dino_model", options=dino_options(),
                               tooltip="DINO ViT checkpoint in models/dino (PIE-Bench: dino_vitbase8_pretrain.pth)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="CLIP vision model (PIE-Bench: ViT-L/14) for the CLIP similarities."),
                io.Clip.Input("clip", optional=True,
                              tooltip="The matching CLIP-L text encoder (CLIPLoader, type stable_diffusion)."),
            ],
            outputs=[
                EditMetricsType.Output("metrics", tooltip="The numbers, per image: a list of "
                                                          "{metrics, unavailable, notes, mask_convention}."),
                io.Image.Output("table", tooltip="The numbers as a table image."),
            ],
        )

    @classmethod
    def validate_inputs(cls, mask_convention="pie-bench border", lpips_net="squeeze", **kwargs):
        if mask_convention not in measure.MASK_CONVENTIONS:
            return f"{NODE}: mask_convention must be one of {', '.join(measure.MASK_CONVENTIONS)}"
        if lpips_net not in models.LPIPS_BACKBONES:
            return f"{NODE}: lpips_net must be one of {', '.join(models.LPIPS_BACKBONES)}"
        return True

    @classmethod
    def execute(cls, source, edited, mask, mask_convention="pie-bench border", target_text="", source_text="",
                lpips_net="squeeze", dino_model=models.DINO_DEFAULT, clip_vision=None, clip=None) -> io.NodeOutput:
        check = cls.validate_inputs(mask_convention, lpips_net)
        if check is not True:
            raise NodeInputError(check)
        settings = measure.Settings(mask_convention=mask_convention, lpips_net=lpips_net, dino_name=dino_model,
                                    clip_vision=clip_vision, clip=clip)
        try:
            results = measure.evaluate_batch(source.cpu(), edited.cpu(), mask.cpu(), target_text or "",
                                             source_text or "", settings)
        except ValueError as e:
            raise NodeInputError(f"{NODE}: {e}") from None
        rows = [r.as_dict() for r in results]
        for r in rows:
            for n in r["notes"]:
                note(NODE, n)
        table = table_image(rows)
        preview = ui.PreviewImage(table, cls=cls)
        text = "\n".join(f"{k}: " + ", ".join(format_value(r["metrics"][k]) for r in rows) for k in measure.METRICS)
        return io.NodeOutput(rows, table, ui={**preview.as_dict(), "text": (text,),
                                              "edit_metrics": [json.dumps(rows)]})


NODES = [EditMetrics]

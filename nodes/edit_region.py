"""EditRegionPreview: which tokens an edit regenerates, at the model's real granularity."""
from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..kernels.token_mask import MaskError, as_mask_batch, build_token_masks, overlay_image
from .common import CATEGORY, NodeInputError, note
from .families import detect_family

NODE = "EditRegionPreview"


def match_mask_to_images(mask: torch.Tensor, images: torch.Tensor, node: str) -> tuple[torch.Tensor, list[str]]:
    """Mask ``[B, h, w]`` batched like ``images`` ``[B, H, W, C]``.

    A mask of another size is kept at its own resolution (it is resized straight to the
    latent grid later, which avoids resampling twice) and a note is logged; a single mask
    serves every image; any other batch mismatch is an error naming the node.
    """
    notes = []
    try:
        m = as_mask_batch(mask)
    except MaskError as e:
        raise NodeInputError(f"{node}: {e}") from None
    B, H, W = images.shape[0], images.shape[1], images.shape[2]
    if tuple(m.shape[-2:]) != (H, W):
        notes.append(note(node, f"mask is {m.shape[-1]}x{m.shape[-2]} but the image is {W}x{H}; "
                                f"the mask is resized to the model's token grid"))
    if m.shape[0] == 1 and B > 1:
        m = m.expand(B, *m.shape[-2:])
    elif m.shape[0] != B:
        raise NodeInputError(f"{node}: {m.shape[0]} masks for {B} images; give one mask, or one per image")
    return m, notes


def pixel_region(tokens: torch.Tensor, token_px: int, hw: tuple[int, int]) -> torch.Tensor:
    """Bool ``[B, H, W]``: each image pixel takes the value of the token that covers it."""
    H, W = hw
    ys = (torch.arange(H) // token_px).clamp(max=tokens.shape[-2] - 1)
    xs = (torch.arange(W) // token_px).clamp(max=tokens.shape[-1] - 1)
    return tokens[:, ys][:, :, xs]


class EditRegionPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Edit Region Preview",
            category=CATEGORY,
            description=(
                "Shows which tokens an edit with this model regenerates (red) and which it keeps "
                "(blue), at the model's real granularity: 16 px tokens for FLUX and Qwen-Image, "
                "8 px latent pixels for UNet models. Any touched latent pixel counts, and any "
                "foreground latent pixel makes its token foreground. Also outputs the fraction "
                "of image tokens computed."),
            inputs=[
                io.Model.Input("model", tooltip="The model that will do the edit; its family sets the token size."),
                io.Image.Input("image", tooltip="The source image (a batch is handled per image)."),
                io.Mask.Input("mask", tooltip="Region to edit: 1 (white) = regenerate, 0 = keep. "
                                              "Resized to the image if its size differs."),
            ],
            outputs=[
                io.Image.Output("overlay", tooltip="The image tinted red where tokens are regenerated, "
                                                   "blue where they are kept, with the token grid drawn."),
                io.Float.Output("computed_fraction", tooltip="Fraction of image tokens computed "
                                                             "(mean over the batch)."),
            ],
        )

    @classmethod
    def execute(cls, model, image, mask) -> io.NodeOutput:
        family = detect_family(model, NODE)
        m, notes = match_mask_to_images(mask, image, NODE)
        B, H, W = image.shape[:3]
        latent_hw = (max(1, H // family.downscale), max(1, W // family.downscale))
        try:
            masks = build_token_masks(m, latent_hw, family.patch)
        except MaskError as e:
            raise NodeInputError(f"{NODE}: {e}") from None
        region = pixel_region(masks.tokens.cpu(), family.token_px, (H, W))
        overlay = torch.stack([overlay_image(image[i].cpu(), region[i], family.token_px) for i in range(B)])
        fractions = masks.computed_fraction()
        fg, total = masks.counts()
        lines = [f"{family.label}: {family.token_px} px tokens, grid "
                 f"{masks.tokens.shape[-1]}x{masks.tokens.shape[-2]}"]
        for i in range(B):
            lines.append(f"image {i}: {fg[i]}/{total} tokens computed ({100 * float(fractions[i]):.1f}%)")
        text = "\n".join(lines + notes)
        preview = ui.PreviewImage(overlay, cls=cls)
        return io.NodeOutput(overlay, float(fractions.mean()),
                             ui={**preview.as_dict(), "text": (text,)})

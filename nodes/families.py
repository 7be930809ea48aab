"""Which model family a ComfyUI MODEL is, and its token geometry.

The pack supports FLUX.1 (dev, schnell, Kontext), Qwen-Image (and Qwen-Image-Edit) and
UNet models (SD1.x, SD2.x, SDXL). Detection looks at ComfyUI's model classes, never at file
names, so users' own checkpoints, LoRAs, fp8 and GGUF weights are recognised alike.
"""
from __future__ import annotations

from dataclasses import dataclass

from .common import NodeInputError

SUPPORTED_TEXT = "FLUX.1 (dev, schnell, Kontext), Qwen-Image (Edit), UNet models (SD1.5, SD2, SDXL)"


@dataclass(frozen=True)
class Family:
    key: str          # "flux", "qwen_image" or "unet"
    label: str        # shown to users
    patch: int        # latent pixels per token side
    downscale: int    # image pixels per latent pixel
    latent_ndim: int  # 4 ([B,C,H,W]) or 5 ([B,C,T,H,W])

    @property
    def token_px(self) -> int:
        return self.patch * self.downscale

    @property
    def is_dit(self) -> bool:
        return self.key != "unet"


FLUX = Family("flux", "FLUX.1", 2, 8, 4)
QWEN_IMAGE = Family("qwen_image", "Qwen-Image", 2, 8, 5)
UNET = Family("unet", "UNet (SD1.x/SD2/SDXL)", 1, 8, 4)


class UnsupportedModel(NodeInputError):
    """The model's family is not supported by a node (the message names node and families)."""


def model_family_name(model) -> str:
    """A readable name of the model's architecture (its ComfyUI model class)."""
    inner = getattr(model, "model", None)
    return type(inner).__name__ if inner is not None else type(model).__name__


def detect_family(model, node: str, allowed: tuple[Family, ...] = (FLUX, QWEN_IMAGE, UNET)) -> Family:
    """Family of a ComfyUI ``ModelPatcher``; raises :class:`UnsupportedModel` naming the node,
    the model's class and the supported families."""
    import comfy.model_base as mb  # noqa: PLC0415 - keeps this module importable for docs
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: PLC0415

    inner = getattr(model, "model", None)
    family = None
    if inner is not None:
        dm = getattr(inner, "diffusion_model", None)
        flux2 = getattr(mb, "Flux2", None)
        chroma = getattr(mb, "Chroma", None)
        if isinstance(inner, mb.Flux) and not (flux2 and isinstance(inner, flux2)) \
                and not (chroma and isinstance(inner, chroma)) and getattr(dm, "patch_size", 2) == 2:
            family = FLUX
        elif hasattr(mb, "QwenImage") and isinstance(inner, mb.QwenImage):
            family = QWEN_IMAGE
        elif isinstance(dm, UNetModel):
            family = UNET
    if family is None or family not in allowed:
        supported = ", ".join(f.label for f in allowed) if allowed != (FLUX, QWEN_IMAGE, UNET) else SUPPORTED_TEXT
        raise UnsupportedModel(
            f"{node}: this model ({model_family_name(model)}) is not supported. "
            f"Supported model families: {supported}.")
    return family

"""The trained synthetic models as ComfyUI objects (ModelPatcher, VAE, a CLIP stand-in).

Imports ComfyUI lazily; a missing weight file raises ``MissingWeights`` naming the command that
recreates it.
"""
from __future__ import annotations

from . import text
from .training import load


# Each model's VAE: the FLUX-family models (text-to-image and Kontext-style) at 192 pixels on
# ``vae16``, the SD-type UNets at 128 pixels on ``vae4``.
VAE_OF = {"flux": "vae16", "kontext": "vae16", "sd": "vae4", "ip2p": "vae4"}


def vae(name: str = "vae16"):
    """The synthetic TAESD-layout VAE (``vae16``: 16 channels, FLUX family, 192-pixel images;
    ``vae4``: 4 channels, SD-type UNets) as ComfyUI loads
    a VAE file."""
    import comfy.sd

    v = comfy.sd.VAE(sd=load(name))
    v.throw_exception_if_invalid()
    return v


def flux(name: str = "flux"):
    """The synthetic FLUX (``flux``) or Kontext-style (``kontext``) model as a ModelPatcher."""
    import comfy.model_management
    import comfy.model_patcher

    from .train_dit import build

    model = build(load(name))
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def unet(name: str = "sd"):
    """The synthetic SD1.5-class UNet (``sd``: text-to-image, 4 channels) or InstructPix2Pix-style
    UNet (``ip2p``: 8 input channels) as a ModelPatcher."""
    import comfy.model_management
    import comfy.model_patcher

    from .train_unet import build

    model = build(load(name), ip2p=name == "ip2p")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class SyntheticCLIP:
    """What ComfyUI's text nodes call on a CLIP (``tokenize``, ``encode_from_tokens_scheduled``,
    ``encode_from_tokens``), giving the conditioning of ``synthetic.text``."""

    def clone(self):
        return SyntheticCLIP()

    def tokenize(self, prompt, return_word_ids=False, **kwargs):
        return {"text": str(prompt)}

    @staticmethod
    def _encode(prompt: str):
        ctx, pooled = text.encode(prompt)
        return ctx[None], pooled[None]

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        cond, pooled = self._encode(tokens["text"])
        extra = {"pooled_output": pooled}
        extra.update(add_dict or {})
        return [[cond, extra]]

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        cond, pooled = self._encode(tokens["text"])
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond


def conditioning(prompt: str, guidance: float = 3.5, **extra):
    clip = SyntheticCLIP()
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    cond[0][1]["guidance"] = guidance
    cond[0][1].update(extra)
    return cond

"""Small, real ComfyUI models with seeded random weights, for tests only.

No weights can be downloaded, so tests build ComfyUI's own model classes in-process at a
tiny width and fill every parameter with seeded ``randn * scale`` (ComfyUI's layers skip
weight initialisation: an unfilled model holds garbage). Text encoders have fixed, large
sizes, so a stub CLIP returns deterministic conditioning of the right shape instead.

Families: FLUX.1 dev (guidance embedding), FLUX.1 schnell, FLUX.1 Kontext (the dev
architecture fed ``reference_latents``), Qwen-Image (Edit), SD1.5- and SDXL-class UNets, and
matching VAEs (TAESD format for FLUX and SD1.5, a narrow Wan 2.1 VAE for Qwen-Image).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models

# Widths of the tiny fixtures. Context widths are what the stub CLIP produces.
FLUX_CONTEXT = 64
FLUX_VEC = 32
QWEN_CONTEXT = 64
SD15_CONTEXT = 64
SDXL_CONTEXT = 64
SDXL_POOLED = 32  # SDXL's adm input is the pooled text vector + 6 size embeddings of 256


def _is_norm_gain(name: str, p: torch.Tensor) -> bool:
    parts = name.split(".")
    return p.ndim == 1 and (parts[-1] == "scale" or (parts[-1] in ("weight", "gamma") and "norm" in ".".join(parts[-3:-1])))


def _fill(module: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    """Seeded ``randn * scale`` everywhere; normalisation gains near 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = scale * torch.randn(p.shape, generator=gen, dtype=torch.float32)
            p.copy_((1.0 + noise if _is_norm_gain(name, p) else noise).to(p.dtype))


def flux_config(hidden: int = 128, heads: int = 2, depth: int = 2, single: int = 2,
                guidance: bool = True) -> dict:
    import comfy.ldm.flux.model as flux_model

    head = hidden // heads
    a0 = head // 8
    a1 = (head - a0) // 2
    cfg = {
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": FLUX_VEC,
        "context_in_dim": FLUX_CONTEXT, "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": heads,
        "depth": depth, "depth_single_blocks": single, "axes_dim": [a0, a1, head - a0 - a1], "theta": 10000,
        "patch_size": 2, "qkv_bias": True, "guidance_embed": guidance,
    }
    if "txt_ids_dims" in getattr(flux_model.FluxParams, "__dataclass_fields__", {}):
        cfg["txt_ids_dims"] = []  # newer ComfyUI (0.4+): FLUX.1 gives text tokens no positions
    return cfg


def qwen_config(hidden: int = 128, heads: int = 2, layers: int = 2) -> dict:
    head = hidden // heads
    a0 = head // 8
    a1 = (head - a0) // 2
    return {
        "image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": layers,
        "attention_head_dim": head, "num_attention_heads": heads, "joint_attention_dim": QWEN_CONTEXT,
        "axes_dims_rope": (a0, a1, head - a0 - a1), "patch_size": 2,
    }


def sd15_config(channels: int = 32) -> dict:
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": channels,
        "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "channel_mult": [1, 2],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": SD15_CONTEXT,
        "num_heads": -1, "num_head_channels": 16, "use_temporal_attention": False,
        "use_temporal_resblock": False, "transformer_depth_output": [1, 1, 1, 1],
    }


def sdxl_config(channels: int = 32) -> dict:
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": SDXL_POOLED + 6 * 256, "num_classes": "sequential",
        "in_channels": 4, "model_channels": channels, "num_res_blocks": [1, 1], "transformer_depth": [0, 1],
        "channel_mult": [1, 2], "transformer_depth_middle": 1, "use_linear_in_transformer": True,
        "context_dim": SDXL_CONTEXT, "num_heads": -1, "num_head_channels": 16, "use_temporal_attention": False,
        "use_temporal_resblock": False, "transformer_depth_output": [0, 0, 1, 1],
    }


def _patcher(model_config, seed: int, dtype=torch.float32):
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({})
    _fill(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    load = comfy.model_management.get_torch_device()
    offload = comfy.model_management.unet_offload_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=load, offload_device=offload)


def tiny_flux(seed: int = 0, guidance: bool = True, **kw):
    """FLUX.1-dev-like (guidance embedding) ModelPatcher; also serves Kontext (reference
    latents arrive through the ``reference_latents`` conditioning key)."""
    cfg = flux_config(guidance=guidance, **kw)
    cls = comfy.supported_models.Flux if guidance else comfy.supported_models.FluxSchnell
    return _patcher(cls(cfg), seed)


def tiny_qwen_image(seed: int = 0, **kw):
    return _patcher(comfy.supported_models.QwenImage(qwen_config(**kw)), seed)


def tiny_sd15(seed: int = 0, **kw):
    return _patcher(comfy.supported_models.SD15(sd15_config(**kw)), seed)


def tiny_sd15_ip2p(seed: int = 0, **kw):
    """An InstructPix2Pix-type SD1.5 UNet: 8 input channels (noise + the encoded source image)."""
    cfg = sd15_config(**kw)
    cfg["in_channels"] = 8
    return _patcher(comfy.supported_models.SD15_instructpix2pix(cfg), seed)


def tiny_sdxl(seed: int = 0, **kw):
    """An SDXL-class UNet (adm size/pooled conditioning, linear transformer projections)."""
    return _patcher(comfy.supported_models.SDXL(sdxl_config(**kw)), seed)


def _calibration_image() -> torch.Tensor:
    """A fixed picture (smooth colour ramps plus seeded noise) that sets the fixture VAEs'
    latent scale."""
    gen = torch.Generator().manual_seed(1234)
    ys = torch.linspace(0, 1, 64).view(64, 1, 1)
    xs = torch.linspace(0, 1, 96).view(1, 96, 1)
    ramps = torch.cat([ys.expand(64, 96, 1), xs.expand(64, 96, 1), (ys * xs).expand(64, 96, 1)], -1)
    return (0.7 * ramps + 0.3 * torch.rand(64, 96, 3, generator=gen)).unsqueeze(0)


def _latent_std(vae) -> float:
    return float(vae.encode(_calibration_image()).detach().float().std())


def tiny_taesd_vae(latent_channels: int, seed: int = 0):
    """A random TAESD-format state dict loaded the way ComfyUI loads VAE files.

    Random weights alone encode pictures to latents of magnitude ~4e7, at which a model's
    output (and so any LoRA or weight change) is swamped by the latent itself. The file's own
    ``vae_scale`` (the factor TAESD divides encodings by and multiplies decodings with) is set
    so that pictures encode to latents of standard deviation ~1, as real VAEs' latents are.
    """
    import comfy.taesd.taesd as taesd

    net = taesd.TAESD(latent_channels=latent_channels)
    _fill(net, seed, scale=0.1)
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    sd["vae_scale"] = torch.tensor(1.0)
    sd["vae_shift"] = torch.tensor(0.0)
    sd["vae_scale"] = torch.tensor(_latent_std(comfy.sd.VAE(sd=dict(sd))))
    vae = comfy.sd.VAE(sd=sd)
    vae.throw_exception_if_invalid()
    return vae


def tiny_wan_vae(seed: int = 0, dim: int = 8):
    """A narrow Wan 2.1 VAE (Qwen-Image's VAE architecture), loaded from its state dict.

    Random weights alone encode pictures to latents of standard deviation ~0.05, at which a
    model's output is small next to nothing and the perceptual judge's first decoder conv sees
    almost only its bias. The encoder's quant conv (``conv1``, the mean half) is divided by that
    spread and the post-quant conv (``conv2``) multiplied by it, so pictures encode to latents of
    standard deviation ~1 (as the TAESD fixtures do) and the round trip decodes the same picture."""
    import comfy.ldm.wan.vae as wan_vae

    net = wan_vae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], dropout=0.0)
    _fill(net, seed, scale=0.05)
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    spread = _latent_std(comfy.sd.VAE(sd=dict(sd)))
    z = net.z_dim
    sd["conv1.weight"][:z] /= spread
    sd["conv1.bias"][:z] /= spread
    sd["conv2.weight"] *= spread
    vae = comfy.sd.VAE(sd=sd)
    vae.throw_exception_if_invalid()
    return vae


class StubCLIP:
    """Stands in for a text encoder: deterministic conditioning from the prompt text.

    Implements what ComfyUI's text-encode nodes call (``tokenize``,
    ``encode_from_tokens_scheduled``, ``encode_from_tokens``), so CLIPTextEncode,
    FluxGuidance, ReferenceLatent and TextEncodeQwenImageEdit run unmodified.
    """

    def __init__(self, family: str):
        self.family = family
        self.context, self.pooled = {"flux": (FLUX_CONTEXT, FLUX_VEC), "qwen_image": (QWEN_CONTEXT, None),
                                     "sd15": (SD15_CONTEXT, None), "sdxl": (SDXL_CONTEXT, SDXL_POOLED)}[family]

    def clone(self):
        return StubCLIP(self.family)

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return {"text": str(text)}

    def _encode(self, text: str):
        gen = torch.Generator().manual_seed(zlib.crc32(f"{self.family}:{text}".encode()))
        n = 77 if self.family in ("sd15", "sdxl") else max(4, min(32, 2 * len(text.split())))
        cond = torch.randn(1, n, self.context, generator=gen)
        pooled = torch.randn(1, self.pooled, generator=gen) if self.pooled else None
        return cond, pooled

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        cond, pooled = self._encode(tokens["text"])
        extra = {"pooled_output": pooled} if pooled is not None else {}
        extra.update(add_dict or {})
        return [[cond, extra]]

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        cond, pooled = self._encode(tokens["text"])
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond


def stub_conditioning(family: str, text: str = "a photo", **extra):
    """Conditioning as CLIPTextEncode would give it, from the stub encoder."""
    clip = StubCLIP(family)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    cond[0][1].update(extra)
    return cond


@dataclass(frozen=True)
class Fixture:
    family: str       # stub CLIP family
    model: callable
    vae: callable


FIXTURES = {
    "flux_dev": Fixture("flux", lambda seed=0: tiny_flux(seed, guidance=True), lambda: tiny_taesd_vae(16)),
    "flux_schnell": Fixture("flux", lambda seed=0: tiny_flux(seed, guidance=False), lambda: tiny_taesd_vae(16)),
    "flux_kontext": Fixture("flux", lambda seed=0: tiny_flux(seed, guidance=True), lambda: tiny_taesd_vae(16)),
    "qwen_image": Fixture("qwen_image", lambda seed=0: tiny_qwen_image(seed), lambda: tiny_wan_vae()),
    "sd15": Fixture("sd15", lambda seed=0: tiny_sd15(seed), lambda: tiny_taesd_vae(4)),
    "sdxl": Fixture("sdxl", lambda seed=0: tiny_sdxl(seed), lambda: tiny_taesd_vae(4)),
    "sd15_ip2p": Fixture("sd15", lambda seed=0: tiny_sd15_ip2p(seed), lambda: tiny_taesd_vae(4)),
}

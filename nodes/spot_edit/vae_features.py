"""First decoder layers of a ComfyUI VAE, as features for SpotEdit's perceptual judge.

The authors compare the decoder's input conv, mid block and first up block. This module
runs exactly those parts of the model's own VAE decoder, for the decoder families ComfyUI
loads: the KL autoencoder of FLUX / SD (``conv_in``, ``mid``, ``up[-1]``), TAESD
(first conv, first blocks, first upsample) and the Wan 2.1 VAE of Qwen-Image (``conv1``,
``middle``, first upsampling stage). Inputs are user-space latents (what VAE Decode takes).
"""
from __future__ import annotations

import torch

import comfy.model_management


class UnsupportedVAE(ValueError):
    pass


def _kl_features(fsm, z):
    dec = fsm.decoder
    if getattr(fsm, "post_quant_conv", None) is not None:
        z = fsm.post_quant_conv(z)
    h0 = dec.conv_in(z)
    h = dec.mid.block_1(h0, None)
    h = dec.mid.attn_1(h)
    h1 = dec.mid.block_2(h, None)
    top = dec.num_resolutions - 1
    h = h1
    for i_block in range(dec.num_res_blocks + 1):
        h = dec.up[top].block[i_block](h, None)
        if len(dec.up[top].attn) > 0:
            h = dec.up[top].attn[i_block](h)
    return [h0, h1, h]


def _taesd_features(fsm, z):
    # TAESD decoder: clamp, conv, relu | 3 blocks | upsample, conv, block | ...
    seq = fsm.taesd_decoder
    x = (z - fsm.vae_shift) * fsm.vae_scale
    feats = []
    for i, layer in enumerate(seq):
        x = layer(x)
        if i in (2, 5, 8):  # input conv, the first blocks ("mid"), the first up stage
            feats.append(x)
        if i == 8:
            break
    if len(feats) != 3:
        raise UnsupportedVAE("unexpected TAESD decoder layout")
    return feats


def _wan_features(fsm, z):
    if z.ndim == 4:
        z = z.unsqueeze(2)
    x = fsm.conv2(z[:, :, :1])
    dec = fsm.decoder
    h0 = dec.conv1(x)
    h = h0
    for layer in dec.middle:
        h = layer(h)
    h1 = h
    for layer in dec.upsamples:
        h = layer(h)
        if type(layer).__name__ == "Resample":
            break
    return [f[:, :, 0] for f in (h0, h1, h)]


def decoder_features(vae, latent: torch.Tensor) -> list[torch.Tensor]:
    """Three feature maps ``[B, C, H, W]`` from the first decoder layers of ``vae``."""
    fsm = vae.first_stage_model
    if hasattr(fsm, "taesd_decoder"):
        fn = _taesd_features
    elif hasattr(fsm, "decoder") and hasattr(fsm.decoder, "conv_in") and hasattr(fsm.decoder, "mid"):
        fn = _kl_features
    elif hasattr(fsm, "decoder") and hasattr(fsm.decoder, "middle") and hasattr(fsm, "conv2"):
        fn = _wan_features
    else:
        raise UnsupportedVAE(f"no perceptual features for a {type(fsm).__name__} VAE")
    comfy.model_management.load_models_gpu([vae.patcher])
    with torch.no_grad():
        z = latent.to(vae.device, vae.vae_dtype)
        if fn is not _wan_features and z.ndim == 5:
            z = z[:, :, 0]
        return [f.float() for f in fn(fsm, z)]

"""Train a TAESD-layout VAE (16 latent channels, the FLUX family's) on synthetic scenes.

ComfyUI loads the file as any TAESD/TAEF1 VAE (``taesd_encoder.*``, ``taesd_decoder.*``,
``vae_scale``, ``vae_shift``). ``vae_scale``/``vae_shift`` are set after training so that the
latents it gives have the statistics of the FLUX latent format (mean 0.1159, std 1/0.3611).

Two shared CPU cores cannot train TAESD's 64-wide, 48-convolution network in minutes, so a
narrow plain network in TAESD's layout is trained instead and written into it: every residual
block all zero (a block is then ``relu(x)``, the identity on its non-negative input) and only
the first ``WIDTH`` channels of the convolutions between blocks non-zero. ComfyUI runs the full
layout and computes the same numbers (zero channels and zero blocks add exact zeros).
Training sees random crops (the network is fully convolutional) with a little noise added to
the latent, so the decoder tolerates a denoiser's small errors.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from . import scenes
from .training import check_writable, read, save

FLUX_SHIFT, FLUX_SCALE = 0.1159, 0.3611
SD_SHIFT, SD_SCALE = 0.0, 0.18215
WIDTH = 32
OBJECT_WEIGHT = 4.0
# TAESD's Sequential indices: which residual blocks are trained (the others stay all zero, i.e.
# ``relu``). The first version had none and a 24-wide decoder of five convolutions: it blurred
# every small shape into a disc (29 % of objects survived a round trip); one block per scale
# on both sides, two at the latent's scale of the decoder, fix that at a few times the cost.
ENC_LAYOUT = ("conv", "block", "conv", "block", "relu", "relu", "conv", "block", "relu", "relu",
              "conv", "block", "relu", "relu", "conv")
DEC_LAYOUT = ("clamp", "conv", "relu", "block", "block", "relu", "up", "conv", "block", "relu", "relu", "up", "conv",
              "block", "relu", "relu", "up", "conv", "block", "conv")
ENC_STRIDE = {2, 6, 10}
NO_BIAS = {("taesd_encoder", 2), ("taesd_encoder", 6), ("taesd_encoder", 10), ("taesd_decoder", 7),
           ("taesd_decoder", 12), ("taesd_decoder", 17)}


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """TAESD's residual block (same parameter names), narrow."""

    def __init__(self, w: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(w, w, 3, padding=1))

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


def _seq(prefix: str, layout, latent_channels: int, w: int, blocks: bool = True) -> nn.Sequential:
    mods, convs = [], [i for i, k in enumerate(layout) if k == "conv"]
    for i, kind in enumerate(layout):
        if kind == "conv":
            c_in = (3 if prefix == "taesd_encoder" else latent_channels) if i == convs[0] else w
            c_out = (latent_channels if prefix == "taesd_encoder" else 3) if i == convs[-1] else w
            stride = 2 if prefix == "taesd_encoder" and i in ENC_STRIDE else 1
            mods.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride, bias=(prefix, i) not in NO_BIAS))
        elif kind == "block":
            mods.append(Block(w) if blocks else nn.ReLU())
        elif kind == "relu":
            mods.append(nn.ReLU())
        elif kind == "up":
            mods.append(nn.Upsample(scale_factor=2))
        else:
            mods.append(Clamp())
    return nn.Sequential(*mods)


def narrow(latent_channels: int, w: int = WIDTH, blocks: bool = True) -> tuple[nn.Sequential, nn.Sequential]:
    """The trained networks: TAESD's encoder and decoder, index for index, at width ``w``, the
    untrained residual blocks (all of them with ``blocks=False``) as ``relu`` (what an all-zero
    block computes)."""
    enc = _seq("taesd_encoder", ENC_LAYOUT, latent_channels, w, blocks)
    dec = _seq("taesd_decoder", DEC_LAYOUT, latent_channels, w, blocks)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for seq in (enc, dec):
            for name, m in seq.named_modules():
                if isinstance(m, nn.Conv2d):
                    gain = 0.1 if name.endswith("conv.4") else 1.0   # residual branches start small
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * gain * (2.0 / m.weight[0].numel()) ** 0.5)
                    if m.bias is not None:
                        m.bias.zero_()
    return enc, dec


def to_taesd(enc: nn.Sequential, dec: nn.Sequential, latent_channels: int) -> dict[str, torch.Tensor]:
    """Zero-pad the narrow networks into a TAESD state dict (untrained blocks all zero)."""
    import comfy.taesd.taesd as taesd

    full = taesd.TAESD(latent_channels=latent_channels)
    sd = {k: torch.zeros_like(v) for k, v in full.state_dict().items() if k.startswith("taesd_")}
    for prefix, seq in (("taesd_encoder", enc), ("taesd_decoder", dec)):
        for name, v in seq.state_dict().items():
            key = f"{prefix}.{name}"
            if v.ndim == 4:
                o, c = v.shape[:2]
                sd[key][:o, :c] = v.detach()
            else:
                sd[key][:v.shape[0]] = v.detach()
    return sd


def batch(rng: np.random.Generator, n: int, crop: int, with_masks: bool = False, size: int = scenes.SIZE):
    """Random crops of random scenes rendered at ``size`` in 0..1 (and the crops' object masks)."""
    out = np.empty((n, crop, crop, 3), dtype=np.uint8)
    obj = np.zeros((n, 1, crop, crop), dtype=np.float32)
    for i in range(n):
        img, masks = scenes.render(scenes.random_scene(rng), size)
        y, x = rng.integers(0, size - crop + 1, 2) // 8 * 8
        out[i] = img[y:y + crop, x:x + crop]
        for m in masks:
            obj[i, 0] += m[y:y + crop, x:x + crop]
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0
    return (x, torch.from_numpy(obj)) if with_masks else x


def _stage(enc, dec, params, steps, batch_size, crop, lr, seed, label, t0, size):
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        x, obj = batch(rng, batch_size, crop, with_masks=True, size=size)
        z = enc(x)
        y = dec(z + 0.1 * z.detach().std() * torch.randn_like(z))
        weight = 1.0 + OBJECT_WEIGHT * obj     # objects are a small part of the pixels but all the judge sees
        loss = (weight * ((y - x).abs() + (y - x).pow(2))).mean() + 1e-4 * z.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"{label} step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    return loss.item(), rng


# Per file: both VAEs use the block recipe; the first one (``plain``: no blocks, width 24, 32-pixel
# crops) stays selectable for comparison. Image size per file: vae16 was trained on 128-pixel renders
# (the diffusion models now use 192; scenes.VAE16_SIZE), vae4 on 128-pixel ones too (scenes.VAE4_SIZE; the
# UNets use 192, scenes.UNET_SIZE).
RECIPES = {"plain": {"width": 24, "blocks": False, "crop": 32}, "blocks": {"width": 32, "blocks": True, "crop": 48}}
DEFAULT_RECIPE = {"vae16": "blocks", "vae4": "blocks"}
IMAGE_SIZE = {"vae16": scenes.VAE16_SIZE, "vae4": scenes.VAE4_SIZE}


def train(steps: int = 1500, batch_size: int = 16, crop: int | None = None, lr: float = 2e-3, force: bool = False,
          latent_channels: int = 16, name: str = "vae16", decoder_steps: int = 400,
          stage1: str | None = None, recipe: str | None = None) -> dict:
    """Stage 1 trains encoder and decoder; stage 2 only the decoder (the latents, and so the
    diffusion models trained on them, do not change). ``stage1``: a file saved after stage 1
    to continue from (what this function saves when ``decoder_steps`` is 0)."""
    check_writable(name, force)
    recipe = recipe or DEFAULT_RECIPE.get(name, "blocks")
    r = RECIPES[recipe]
    crop = crop or r["crop"]
    size = IMAGE_SIZE.get(name, scenes.SIZE)
    torch.manual_seed(0)
    t0 = time.time()
    if stage1:
        enc, dec, vae_scale, vae_shift = from_taesd(read(stage1)[0])
        enc.train(), dec.train()
    else:
        enc, dec = narrow(latent_channels, r["width"], r["blocks"])
        _, rng = _stage(enc, dec, list(enc.parameters()) + list(dec.parameters()), steps, batch_size, crop, lr,
                        0, "vae", t0, size)
        with torch.no_grad():
            z = torch.cat([enc(batch(rng, 8, size, size=size)) for _ in range(4)])
            mean, std = z.mean().item(), z.std().item()
        # encode() returns enc/vae_scale + vae_shift: make that the model family's latent format
        # statistics (FLUX for 16 channels, SD1.5 for 4).
        shift, scale = (FLUX_SHIFT, FLUX_SCALE) if latent_channels == 16 else (SD_SHIFT, SD_SCALE)
        vae_scale = std * scale
        vae_shift = shift - mean / vae_scale
        # Round to the file's fp16 between the stages, as continuing from a stage-1 file does.
        sd1 = {k: v.half() for k, v in to_taesd(enc, dec, latent_channels).items()}
        sd1["vae_scale"], sd1["vae_shift"] = torch.tensor(vae_scale).half(), torch.tensor(vae_shift).half()
        enc, dec, vae_scale, vae_shift = from_taesd(sd1, r["width"], r["blocks"])
        enc.train(), dec.train()
    loss = float("nan")
    if decoder_steps:
        for p in enc.parameters():
            p.requires_grad_(False)
        loss, _ = _stage(enc, dec, list(dec.parameters()), decoder_steps, batch_size, crop, lr, 1, "vae decoder",
                         t0, size)
    sd = to_taesd(enc, dec, latent_channels)
    sd["vae_scale"] = torch.tensor(vae_scale)
    sd["vae_shift"] = torch.tensor(vae_shift)
    path = save(name, sd, force, {"steps": steps, "decoder_steps": decoder_steps, "seed": 0, "recipe": recipe, "width": r["width"], "image_size": size,
                                  "final_loss": f"{loss:.4f}"})
    print(f"saved {path} (vae_scale {vae_scale:.4f} vae_shift {vae_shift:.4f}, {time.time() - t0:.0f}s)")
    return {"loss": loss}


def from_taesd(sd: dict[str, torch.Tensor], w: int = WIDTH,
               blocks: bool = True) -> tuple[nn.Sequential, nn.Sequential, float, float]:
    """The narrow networks back from a TAESD state dict (fast encoding of training sets), and
    ``vae_scale``/``vae_shift``."""
    latent_channels = sd["taesd_decoder.1.weight"].shape[1]
    enc, dec = narrow(latent_channels, w, blocks)
    with torch.no_grad():
        for prefix, seq in (("taesd_encoder", enc), ("taesd_decoder", dec)):
            for name, v in seq.state_dict().items():
                src = sd[f"{prefix}.{name}"]
                v.copy_(src[:v.shape[0], :v.shape[1]].float() if v.ndim == 4 else src[:v.shape[0]].float())
    return enc.eval(), dec.eval(), float(sd["vae_scale"]), float(sd["vae_shift"])

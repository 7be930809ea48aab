"""Train the small SD-type UNets on synthetic scenes (CPU, minutes).

``train_sd``: text-to-image, ComfyUI's SD1.5 class (4 latent channels, the synthetic ``vae4``).
``train_ip2p``: the same UNet with 8 input channels, ComfyUI's ``SD15_instructpix2pix`` class: the
source's raw VAE latent is concatenated to the noisy latent (what ComfyUI's
``InstructPix2PixConditioning`` feeds it), the instruction is the text, the target the image.
Both are epsilon-prediction models on ComfyUI's SD1.5 discrete schedule (``x_t = sqrt(abar) x0 +
sqrt(1 - abar) eps``), 10 % empty text (so classifier-free guidance works); the editing model
also sees 10 % of sources dropped (image guidance) and 20 % of "add" instructions without their
place phrase ("add a red circle"), so that an instruction whose place a Spatial Instruction node
took out still means something to it.
"""
from __future__ import annotations

import re
import time

import numpy as np
import torch

from . import scenes, text
from .train_dit import OBJECT_WEIGHT, cell_weight   # the latent cells of objects count x5 in the loss
from .training import check_writable, load, optimise, save, weight_path

SD_SCALE = 0.18215
CHANNELS = 64        # model_channels of the shipped UNets (32 before: 30.9 % of objects right at cfg 3; 64: 49.4 %)
SIZE = scenes.UNET_SIZE     # the SD1.5-class side's renders (vae4's training images)


def config(in_channels: int = 4, channels: int = CHANNELS) -> dict:
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": in_channels, "model_channels": channels,
        "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "channel_mult": [1, 2],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": text.DIM,
        "num_heads": -1, "num_head_channels": 16, "use_temporal_attention": False,
        "use_temporal_resblock": False, "transformer_depth_output": [1, 1, 1, 1],
    }


def build(sd: dict | None = None, ip2p: bool = False, channels: int = CHANNELS):
    """The ComfyUI SD1.5 (or SD1.5 InstructPix2Pix) model of the synthetic config, filled from
    ``sd`` (its width read from it) or freshly initialised at ``channels`` (ComfyUI's layers skip
    initialisation)."""
    import comfy.supported_models

    if sd is not None:
        channels = int(sd["input_blocks.0.0.weight"].shape[0])
    cls = comfy.supported_models.SD15_instructpix2pix if ip2p else comfy.supported_models.SD15
    mc = cls(config(8 if ip2p else 4, channels))
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({})
    dm = model.diffusion_model
    if sd is not None:
        dm.load_state_dict({k: v.float() for k, v in sd.items()})
        return model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in dm.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (1.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
        dm.out[-1].weight.zero_()
        dm.out[-1].bias.zero_()
    return model


def _vae4():
    from .train_vae import from_taesd

    return from_taesd(load("vae4"))


def render_images(scene_list) -> np.ndarray:
    """The training images: ``scenes`` rendered at ``SIZE``, (N, SIZE, SIZE, 3) uint8."""
    return np.stack([scenes.render(s, SIZE)[0] for s in scene_list])


def raw_latents(vae, images: np.ndarray, batch: int = 64) -> torch.Tensor:
    """What ComfyUI's ``VAE.encode`` gives for uint8 images (computed on the narrow network)."""
    enc, _, vae_scale, vae_shift = vae
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255.0
            out.append(enc(x) / vae_scale + vae_shift)
    return torch.cat(out)


def _sdpa(func, *args, **kwargs):
    """Training's attention: ComfyUI's ``attention_pytorch`` (torch's fused scaled-dot-product
    attention) through the attention override. On CPU ComfyUI picks ``attention_sub_quad``, whose
    explicit softmax and its backward took 75 % of a training step at 192 pixels (576 tokens): 2.05 s
    per step at 1 thread there, 0.77 s with this. Same function (outputs agree to 1e-6); sampling
    keeps ComfyUI's choice."""
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch(*args, **kwargs)


def _loop(model, data, steps, batch_size, lr, label, seed=0):
    """data(gen, b) -> (x0 model-space, context, concat_or_None, loss weight (b, 1, h, w) or None)."""
    dm = model.diffusion_model
    abar = 1.0 / (1.0 + model.model_sampling.sigmas.float() ** 2)
    gen = torch.Generator().manual_seed(seed)
    params = list(dm.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    empty_ctx, _ = text.encode("")
    t0, ema = time.time(), None
    for step in range(steps):
        x0, ctx, concat, weight = data(gen, batch_size)
        b = x0.shape[0]
        drop = torch.rand(b, generator=gen) < 0.1
        ctx = torch.where(drop[:, None, None], empty_ctx, ctx)
        t = torch.randint(0, len(abar), (b,), generator=gen)
        a = abar[t][:, None, None, None]
        eps = torch.randn(x0.shape, generator=gen)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        if concat is not None:
            xt = torch.cat([xt, concat], 1)
        out = dm(xt, timesteps=t.float(), context=ctx, transformer_options={"optimized_attention_override": _sdpa})
        err = (out - eps).pow(2)
        loss = (err if weight is None else weight * err).mean()
        ema = optimise(loss, opt, sched, params, ema, step, steps, label, t0)
    return ema


def training_scenes(n: int) -> list:
    """The text-to-image UNet's training scenes (the first ``n``; seed 1)."""
    rng = np.random.default_rng(1)
    return [scenes.random_scene(rng) for _ in range(n)]


def train_sd(steps: int = 2500, batch_size: int = 16, lr: float = 2e-3, n_images: int = 4000,
             force: bool = False, channels: int = CHANNELS) -> float:
    check_writable("sd", force)
    torch.manual_seed(0)
    t0 = time.time()
    sc = training_scenes(n_images)
    rendered = [scenes.render(s, SIZE) for s in sc]
    images = np.stack([img for img, _ in rendered])
    weight = cell_weight(np.stack([np.any(m, axis=0) if m else np.zeros((SIZE, SIZE), bool) for _, m in rendered]))
    lat = raw_latents(_vae4(), images) * SD_SCALE
    ctx, _ = text.encode_batch([s.caption() for s in sc])

    def data(gen, b):
        idx = torch.randint(0, len(lat), (b,), generator=gen)
        return lat[idx], ctx[idx], None, weight[idx]

    model = build(channels=channels)
    loss = _loop(model, data, steps, batch_size, lr, "sd")
    save("sd", model.diffusion_model.state_dict(), force, {"steps": steps, "seed": 0, "loss": f"{loss:.4f}", "image_size": SIZE,
                                                            "channels": channels,
                                                            "object_weight": OBJECT_WEIGHT, "n_images": n_images,
                                                            "threads": torch.get_num_threads(),
                                                            "minutes": f"{(time.time() - t0) / 60:.1f}"})
    return loss


_PLACE = re.compile(r"\s+at the .*$")


def ip2p_from(sd: dict) -> dict:
    """An 8-input-channel state dict from the text-to-image UNet's: the first convolution's extra
    (source) channels start at zero, as InstructPix2Pix starts from Stable Diffusion."""
    out = {k: v.float() for k, v in sd.items()}
    w = out["input_blocks.0.0.weight"]
    out["input_blocks.0.0.weight"] = torch.cat([w, torch.zeros_like(w)], 1)
    return out


def train_ip2p(steps: int = 2100, batch_size: int = 16, lr: float = 1e-3, n_pairs: int = 1500,
               force: bool = False, init: str | None = "sd") -> float:
    """``init``: start from that shipped text-to-image UNet (it already draws the objects the
    phrases name; the source channels start at zero), or from scratch (None). The loss counts the
    latent cells the edit changes x5, as the Kontext-style model's does."""
    check_writable("ip2p", force)
    if init is not None:
        weight_path(init)  # missing: the message names the command that recreates it
    torch.manual_seed(0)
    t0 = time.time()
    pairs = scenes.edits(2, n_pairs)
    vae = _vae4()
    src = raw_latents(vae, render_images([p.source for p in pairs]))
    tgt = raw_latents(vae, render_images([p.target for p in pairs])) * SD_SCALE
    weight = cell_weight(np.stack([p.mask(SIZE) for p in pairs]))
    ctx, _ = text.encode_batch([p.instruction for p in pairs])
    placeless = torch.stack([text.encode(_PLACE.sub("", p.instruction))[0] for p in pairs])
    is_add = torch.tensor([p.kind == "add" for p in pairs])

    def data(gen, b):
        idx = torch.randint(0, len(src), (b,), generator=gen)
        c = ctx[idx]
        strip = is_add[idx] & (torch.rand(b, generator=gen) < 0.2)
        c = torch.where(strip[:, None, None], placeless[idx], c)
        keep = (torch.rand(b, generator=gen) >= 0.1).float()[:, None, None, None]
        return tgt[idx], c, src[idx] * keep, weight[idx]

    model = build(None if init is None else ip2p_from(load(init)), ip2p=True)
    loss = _loop(model, data, steps, batch_size, lr, "ip2p")
    save("ip2p", model.diffusion_model.state_dict(), force, {"steps": steps, "seed": 0, "loss": f"{loss:.4f}",
                                                               "init": init, "object_weight": OBJECT_WEIGHT,
                                                               "image_size": SIZE, "n_pairs": n_pairs,
                                                               "threads": torch.get_num_threads(),
                                                               "minutes": f"{(time.time() - t0) / 60:.1f}"})
    return loss

"""Train the small FLUX-architecture models on synthetic scenes (CPU, minutes).

``train_flux``: text-to-image, ComfyUI's FLUX.1-dev class (guidance embedding), captions through
``synthetic.text``. ``train_kontext``: the same architecture trained as a FLUX.1 Kontext-style
editor: the source latent is a reference latent (ComfyUI's ``reference_latents``, tokens at
index 1 over the same positions), the instruction the text, the target the image. It starts
from the text-to-image model's weights (train ``flux`` first), as FLUX.1 Kontext starts from
FLUX.1. Images are ``scenes.FLUX_SIZE`` (192) pixels; the loss weighs the latent cells of the
objects (t2i) or of the edit (Kontext-style) more. Rectified flow as ComfyUI samples FLUX (x_t = (1 - t) x0 + t noise, the model predicts noise - x0), logit-normal t, 10 % empty text
(so classifier-free guidance works), guidance input drawn from 1..5 (the model learns to ignore it).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from . import scenes, text
from .training import check_writable, load, optimise, save

LATENT_SCALE, LATENT_SHIFT = 0.3611, 0.1159   # ComfyUI's FLUX latent format


def config(hidden: int = 96, heads: int = 3, depth: int = 2, single: int = 2) -> dict:
    import comfy.ldm.flux.model as flux_model

    head = hidden // heads
    a0 = head // 8
    a1 = (head - a0) // 2
    cfg = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": text.POOLED,
           "context_in_dim": text.DIM, "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": heads,
           "depth": depth, "depth_single_blocks": single, "axes_dim": [a0, a1, head - a0 - a1], "theta": 10000,
           "patch_size": 2, "qkv_bias": True, "guidance_embed": True}
    if "txt_ids_dims" in getattr(flux_model.FluxParams, "__dataclass_fields__", {}):
        cfg["txt_ids_dims"] = []
    return cfg


def build(sd: dict | None = None):
    """The ComfyUI FLUX model (``BaseModel``) of the synthetic config, filled from ``sd`` or
    freshly initialised (ComfyUI's layers skip initialisation)."""
    import comfy.supported_models

    mc = comfy.supported_models.Flux(config())
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({})
    dm = model.diffusion_model
    if sd is not None:
        dm.load_state_dict({k: v.float() for k, v in sd.items()})
        return model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in dm.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.ones_like(p) if name.endswith("scale") else torch.zeros_like(p))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        dm.final_layer.linear.weight.zero_()
        dm.final_layer.linear.bias.zero_()
    return model


def _vae():
    from .train_vae import from_taesd

    return from_taesd(load("vae16"))


def encode_images(vae, images: np.ndarray, batch: int = 64) -> torch.Tensor:
    """Model-space latents ((z - shift) * scale, as ComfyUI's FLUX ``process_in``) of uint8 images,
    the numbers ComfyUI's TAESD ``encode`` gives (computed on the narrow network)."""
    enc, _, vae_scale, vae_shift = vae
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255.0
            z = enc(x) / vae_scale + vae_shift
            out.append((z - LATENT_SHIFT) * LATENT_SCALE)
    return torch.cat(out)


def _rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """FLUX's rotary embedding written out (the formula of ComfyUI's ``apply_rope1``), so autograd
    goes through it: ComfyUI 0.8.0 applies RoPE with a comfy-kitchen operator that has no backward."""
    x_ = x.to(dtype=pe.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    return torch.addcmul(pe[..., 0] * x_[..., 0], pe[..., 1], x_[..., 1]).reshape(*x.shape).type_as(x)


def _attention(q, k, v, pe):
    from comfy.ldm.flux.math import attention

    return attention(_rope(q, pe), _rope(k, pe), v, pe=None)


def _double(block, args):
    """ComfyUI's DoubleStreamBlock forward with out-of-place residual adds (its own ``+=``
    cannot be differentiated); the same modules, so the weights load in ComfyUI unchanged."""
    from comfy.ldm.flux.layers import apply_mod

    img, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
    (im1, im2), (tm1, tm2) = block.img_mod(vec), block.txt_mod(vec)

    def qkv(x, norm, attn, mod):
        y = attn.qkv(apply_mod(norm(x), 1 + mod.scale, mod.shift))
        q, k, v = y.view(y.shape[0], y.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.norm(q, k, v)
        return q, k, v

    iq, ik, iv = qkv(img, block.img_norm1, block.img_attn, im1)
    tq, tk, tv = qkv(txt, block.txt_norm1, block.txt_attn, tm1)
    a = _attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), pe)
    ta, ia = a[:, :txt.shape[1]], a[:, txt.shape[1]:]
    img = img + apply_mod(block.img_attn.proj(ia), im1.gate, None)
    img = img + apply_mod(block.img_mlp(apply_mod(block.img_norm2(img), 1 + im2.scale, im2.shift)), im2.gate, None)
    txt = txt + apply_mod(block.txt_attn.proj(ta), tm1.gate, None)
    txt = txt + apply_mod(block.txt_mlp(apply_mod(block.txt_norm2(txt), 1 + tm2.scale, tm2.shift)), tm2.gate, None)
    return {"img": img, "txt": txt}


def _single(block, args):
    """ComfyUI's SingleStreamBlock forward, out of place (see ``_double``)."""
    from comfy.ldm.flux.layers import apply_mod

    x, vec, pe = args["img"], args["vec"], args["pe"]
    mod, _ = block.modulation(vec)
    qkv, mlp = torch.split(block.linear1(apply_mod(block.pre_norm(x), 1 + mod.scale, mod.shift)),
                           [3 * block.hidden_size, block.mlp_hidden_dim_first], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = block.norm(q, k, v)
    out = block.linear2(torch.cat((_attention(q, k, v, pe), block.mlp_act(mlp)), 2))
    return {"img": x + apply_mod(out, mod.gate, None)}


def training_options(dm) -> dict:
    """transformer_options that route every block through the differentiable forwards."""
    rep = {("double_block", i): (lambda args, extra, b=b: _double(b, args)) for i, b in enumerate(dm.double_blocks)}
    rep.update({("single_block", i): (lambda args, extra, b=b: _single(b, args))
                for i, b in enumerate(dm.single_blocks)})
    return {"patches_replace": {"dit": rep}}


def _loop(dm, data, steps, batch_size, lr, label, seed=0, checkpoint=None, every: int = 250):
    """data(gen, b) -> (x0, context, pooled, ref_or_None, weight): ``weight`` (b, 1, h, w) per latent
    cell of the loss.

    ``checkpoint``: a file the loop resumes from when it exists and writes every ``every`` steps
    (weights, optimiser, schedule, random generator, step), so a run stopped on a loaded machine
    goes on where it was and ends with the weights an uninterrupted run gives (same thread count)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in dm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    t0 = time.time()
    ema = None
    start = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(str(checkpoint), weights_only=True)  # tensors and plain values only: never unpickle
        if (state["label"], state["steps"], state["lr"], state["batch_size"]) != (label, steps, lr, batch_size):
            raise SystemExit(f"{checkpoint} is a checkpoint of another run ({state['label']}, {state['steps']} steps, "
                             f"lr {state['lr']}, batch {state['batch_size']}); remove it or pass another --checkpoint")
        dm.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        start, ema = state["step"], state["ema"]
        print(f"{label}: resumed from {checkpoint} at step {start}", flush=True)
    for step in range(start, steps):
        if checkpoint is not None and step > start and step % every == 0:
            tmp = Path(str(checkpoint) + ".tmp")
            torch.save({"label": label, "steps": steps, "lr": lr, "batch_size": batch_size, "step": step, "ema": ema,
                        "model": dm.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.get_state()}, str(tmp))
            os.replace(tmp, checkpoint)
        x0, ctx, pooled, ref, weight = data(gen, batch_size)
        b = x0.shape[0]
        drop = torch.rand(b, generator=gen) < 0.1
        empty_ctx, empty_pooled = text.encode("")
        ctx = torch.where(drop[:, None, None], empty_ctx, ctx)
        pooled = torch.where(drop[:, None], empty_pooled, pooled)
        t = torch.sigmoid(torch.randn(b, generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        g = 1 + 4 * torch.rand(b, generator=gen)
        kw = {"ref_latents": [ref]} if ref is not None else {}
        out = dm(xt, t, ctx, y=pooled, guidance=g, transformer_options=training_options(dm), **kw)
        loss = (weight * (out - (noise - x0)).pow(2)).mean()
        ema = optimise(loss, opt, sched, params, ema, step, steps, label, t0)
    return ema


SIZE = scenes.FLUX_SIZE
# Objects cover a tenth of the pixels, yet they are all the captions and the judge are about; an
# edit changes even fewer. The loss counts latent cells an object (t2i) or the edit (Kontext-style)
# touches OBJECT_WEIGHT + 1 times, as the VAE's loss does.
OBJECT_WEIGHT = 4.0


def cell_weight(masks: np.ndarray) -> torch.Tensor:
    """(n, H, W) boolean pixel masks -> (n, 1, H/8, W/8) loss weights: 1, or 1 + OBJECT_WEIGHT
    on a latent cell any masked pixel falls in."""
    m = torch.from_numpy(masks).float()[:, None]
    return 1.0 + OBJECT_WEIGHT * torch.nn.functional.max_pool2d(m, 8)


def _dataset_scenes(n: int, seed: int):
    rng = np.random.default_rng(seed)
    sc = [scenes.random_scene(rng) for _ in range(n)]
    rendered = [scenes.render(s, SIZE) for s in sc]
    imgs = np.stack([img for img, _ in rendered])
    objects = np.stack([np.any(m, axis=0) if m else np.zeros((SIZE, SIZE), bool) for _, m in rendered])
    return sc, imgs, objects


def train_flux(steps: int = 6000, batch_size: int = 16, lr: float = 2e-3, n_images: int = 4000,
               force: bool = False, name: str = "flux", checkpoint=None) -> float:
    """``name``: the file to write; ``checkpoint``: see ``_loop``."""
    check_writable(name, force)
    torch.manual_seed(0)
    t0 = time.time()
    sc, imgs, objects = _dataset_scenes(n_images, seed=1)
    lat = encode_images(_vae(), imgs)
    weight = cell_weight(objects)
    ctx, pooled = text.encode_batch([s.caption() for s in sc])
    print(f"flux data: {n_images} scenes encoded ({time.time() - t0:.0f}s)", flush=True)

    def data(gen, b):
        idx = torch.randint(0, len(lat), (b,), generator=gen)
        return lat[idx], ctx[idx], pooled[idx], None, weight[idx]

    model = build()
    loss = _loop(model.diffusion_model, data, steps, batch_size, lr, name, checkpoint=checkpoint)
    save(name, model.diffusion_model.state_dict(), force, {"steps": steps, "seed": 0, "loss": f"{loss:.4f}",
                                                              "image_size": SIZE, "object_weight": OBJECT_WEIGHT,
                                                              "n_images": n_images, "threads": torch.get_num_threads(),
                                                              "minutes": f"{(time.time() - t0) / 60:.1f}"})
    return loss


def train_kontext(steps: int = 3000, batch_size: int = 16, lr: float = 1e-3, n_pairs: int = 1500,
                  force: bool = False, init: str | None = "flux", checkpoint=None) -> float:
    """``init``: start from that shipped model's weights (the text-to-image one, as FLUX.1 Kontext
    starts from FLUX.1: it already draws the objects the phrases name), or from scratch (None)."""
    check_writable("kontext", force)
    torch.manual_seed(0)
    t0 = time.time()
    pairs = scenes.edits(2, n_pairs)
    vae = _vae()
    src = encode_images(vae, np.stack([scenes.render(p.source, SIZE)[0] for p in pairs]))
    tgt = encode_images(vae, np.stack([scenes.render(p.target, SIZE)[0] for p in pairs]))
    weight = cell_weight(np.stack([p.mask(SIZE) for p in pairs]))
    ctx, pooled = text.encode_batch([p.instruction for p in pairs])
    print(f"kontext data: {n_pairs} pairs encoded ({time.time() - t0:.0f}s)", flush=True)

    def data(gen, b):
        idx = torch.randint(0, len(src), (b,), generator=gen)
        return tgt[idx], ctx[idx], pooled[idx], src[idx], weight[idx]

    model = build(None if init is None else {k: v.float() for k, v in load(init).items()})
    loss = _loop(model.diffusion_model, data, steps, batch_size, lr, "kontext", checkpoint=checkpoint)
    save("kontext", model.diffusion_model.state_dict(), force, {"steps": steps, "seed": 0, "loss": f"{loss:.4f}", "init": init,
                                                                 "image_size": SIZE, "object_weight": OBJECT_WEIGHT,
                                                                 "n_pairs": n_pairs, "threads": torch.get_num_threads(),
                                                                 "minutes": f"{(time.time() - t0) / 60:.1f}"})
    return loss

"""Compare SpotFusionSampler's "authors code" mode with the authors' released SpotEdit code.

Both sides run the *same* tiny random weights: ComfyUI's FLUX (Kontext use) and
Qwen-Image transformers are built by the test fixtures, their state dicts converted to the
diffusers layout (ComfyUI's own ``comfy.utils.flux_to_diffusers`` map for FLUX; Qwen-Image
uses the diffusers key names already), and the authors' ``generate`` functions run on a
duck-typed pipeline object that hands them the same text embeddings, source latent and
noise. The perceptual judge uses a tiny diffusers ``AutoencoderKL`` converted to ComfyUI's
VAE layout (FLUX) and a tiny ``AutoencoderKLQwenImage`` converted to ComfyUI's Wan 2.1 VAE
layout (Qwen-Image-Edit; their judge's ``vae.to("cuda")`` gets a stand-in that keeps it on the CPU).
Their code never enters this repository: give the path of a checkout of
Biangbiang0321/SpotEdit (4830b06) and install ``diffusers``::

    git --git-dir=<mirror> archive HEAD | tar -x -C /tmp/authors/SpotEdit
    .venv/bin/python scripts/compare_spot_edit_authors.py /tmp/authors/SpotEdit [--steps 50]

Their code fixes the image at 1024x1024 (the perceptual judge unpacks 64x64 tokens), so the
latent is 128x128. Prints the largest difference of the final latents (model space) and of
the per-step computed-token counts.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401

import torch  # noqa: E402

import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.utils  # noqa: E402
import tiny_models as tm  # noqa: E402
from precise_edit.nodes.spot_edit.nodes import SpotFusionSampler, SpotSelector  # noqa: E402

SIDE = 128  # latent side the authors' perceptual judge assumes (1024 px); --side changes it for L4 / cosine


def _between_middle(scores) -> float:
    """A tau halfway between the two middle scores: half the tokens settle, none sits on the threshold
    (the two sides compute scores in a different order, ~1e-7 apart)."""
    s = scores.flatten().double().sort().values
    k = s.numel() // 2
    return float((s[k - 1] + s[k]) / 2)


def flux_to_diffusers_sd(model, cfg) -> dict:
    """The ComfyUI FLUX state dict in the diffusers FluxTransformer2DModel layout."""
    src = model.model.diffusion_model.state_dict()
    out = {}
    for dkey, spec in comfy.utils.flux_to_diffusers(cfg, output_prefix="").items():
        if isinstance(spec, str):
            if spec in src:
                out[dkey] = src[spec]
        elif spec[1] is None:
            if spec[0] in src:
                out[dkey] = spec[2](src[spec[0]])
        elif spec[0] in src:
            dim, start, size = spec[1]
            out[dkey] = src[spec[0]].narrow(dim, start, size)
    return out


def pack(z):  # [B, C, H, W] -> [B, H/2 * W/2, C * 4] (diffusers' FLUX packing)
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(t, h, w):
    b, n, ct = t.shape
    c = ct // 4
    return t.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def tiny_kl_vae(seed=0):
    """A tiny diffusers AutoencoderKL (FLUX VAE layout: 16 channels, no quant convs) and the
    same decoder weights in ComfyUI's decoder class (converted with ComfyUI's own map)."""
    from diffusers import AutoencoderKL

    import comfy.diffusers_convert
    from comfy.ldm.modules.diffusionmodules.model import Decoder

    d = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32, 32),
                      layers_per_block=1, norm_num_groups=32,
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                      use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in d.named_parameters():
            noise = 0.05 * torch.randn(p.shape, generator=gen)
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
    sd = comfy.diffusers_convert.convert_vae_state_dict(d.state_dict())
    dec = Decoder(ch=32, out_ch=3, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=[], in_channels=3,
                  resolution=256, z_channels=16)
    levels = len(d.config.block_out_channels)  # ComfyUI's map assumes 4 levels: up_blocks.i -> up.(3 - i)

    def level(key):
        parts = key.split(".")
        if parts[0] == "up":
            parts[1] = str(int(parts[1]) - (4 - levels))
        return ".".join(parts)

    dec.load_state_dict({level(k[len("decoder."):]): v for k, v in sd.items() if k.startswith("decoder.")})
    vae = types.SimpleNamespace(first_stage_model=types.SimpleNamespace(decoder=dec.eval()), patcher=None,
                                device=torch.device("cpu"), vae_dtype=torch.float32)
    return d.eval(), vae


def tiny_qwen_vae(seed=0, base_dim=4):
    """A tiny diffusers AutoencoderKLQwenImage and the same weights in ComfyUI's Wan 2.1 VAE layout
    (loaded by ``comfy.sd.VAE`` as a Qwen-Image VAE file would be). Diffusers' names map one to one
    (``mid_block.resnets.0 / attentions.0 / resnets.1`` = ``middle.0 / 1 / 2``, ``up_blocks.i`` =
    four ``upsamples`` entries each, ...); every key and shape is checked."""
    import re

    import comfy.sd
    from diffusers import AutoencoderKLQwenImage

    d = AutoencoderKLQwenImage(base_dim=base_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                               attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in d.named_parameters():
            noise = 0.05 * torch.randn(p.shape, generator=gen)
            p.copy_(1 + noise if name.endswith("gamma") else noise)
    res = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
           "conv_shortcut": "shortcut"}

    def convert(k):
        k = re.sub(r"^quant_conv", "conv1", k)
        k = re.sub(r"^post_quant_conv", "conv2", k)
        k = re.sub(r"^(encoder|decoder)\.conv_in", r"\1.conv1", k)
        k = re.sub(r"^(encoder|decoder)\.norm_out", r"\1.head.0", k)
        k = re.sub(r"^(encoder|decoder)\.conv_out", r"\1.head.2", k)
        k = re.sub(r"mid_block\.attentions\.0", "middle.1", k)
        k = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"middle.{2 * int(m.group(1))}", k)
        k = re.sub(r"^encoder\.down_blocks\.", "encoder.downsamples.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
                   lambda m: f"decoder.upsamples.{4 * int(m.group(1)) + int(m.group(2))}", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0",
                   lambda m: f"decoder.upsamples.{4 * int(m.group(1)) + 3}", k)
        parts = k.split(".")
        if len(parts) >= 3 and parts[-2] in res and (parts[1] in ("downsamples", "upsamples", "middle")):
            parts[-2:-1] = res[parts[-2]].split(".")
        return ".".join(parts)

    sd = {convert(k): v.detach().clone() for k, v in d.state_dict().items()}
    vae = comfy.sd.VAE(sd=dict(sd))
    vae.throw_exception_if_invalid()
    ref = vae.first_stage_model.state_dict()
    if set(ref) != set(sd) or any(ref[k].shape != sd[k].shape for k in sd):
        raise SystemExit(f"Qwen VAE conversion incomplete: {sorted(set(ref) ^ set(sd))[:6]}")
    # their judge calls vae.to('cuda'): hand it the decoder and config only (CPU comparison)
    theirs = types.SimpleNamespace(decoder=d.decoder.eval(), config=d.config, to=lambda *a, **k: None)
    return theirs, vae


def authors_flux(checkout, dm_sd, cfg, prompt, pooled, y_model, noise, steps, judge, tau, dvae):
    sys.path.insert(0, str(Path(checkout) / "FLUX_kontext"))
    import flux_spotedit
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from flux_spot_ultis import SpotEditConfig

    head = cfg["hidden_size"] // cfg["num_heads"]
    tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=cfg["depth"],
                                num_single_layers=cfg["depth_single_blocks"], attention_head_dim=head,
                                num_attention_heads=cfg["num_heads"], joint_attention_dim=cfg["context_in_dim"],
                                pooled_projection_dim=cfg["vec_in_dim"], guidance_embeds=True,
                                axes_dims_rope=tuple(cfg["axes_dim"]))
    missing, unexpected = tr.load_state_dict(dm_sd, strict=False)
    if missing or unexpected:
        raise SystemExit(f"weight conversion incomplete: missing {missing[:5]} unexpected {unexpected[:5]}")
    tr.eval()
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    n = SIDE // 2

    def ids(index):
        i = torch.zeros(n, n, 3)
        i[..., 0] = index
        i[..., 1] = torch.arange(n)[:, None]
        i[..., 2] = torch.arange(n)[None, :]
        return i.reshape(n * n, 3)

    pipe = types.SimpleNamespace(
        default_sample_size=128, vae_scale_factor=8, latent_channels=16, transformer=tr, scheduler=sched,
        _execution_device=torch.device("cpu"), vae=dvae,
        encode_prompt=lambda **k: (prompt, pooled, torch.zeros(prompt.shape[1], 3)),
        prepare_latents=lambda *a, **k: (pack(noise), pack(y_model), ids(0), ids(1)),
        progress_bar=lambda total: contextlib.nullcontext(types.SimpleNamespace(update=lambda: None)),
        maybe_free_model_hooks=lambda: None,
    )
    from precise_edit.kernels.spot import authors_full_steps

    warm, resets = authors_full_steps(steps)  # their list at 50 steps; scaled the same way on both sides
    conf = SpotEditConfig(threshold=tau, judge_method={"perceptual": "LPIPS"}.get(judge, judge),
                          initial_steps=warm, reset_steps=sorted(resets))
    counts = []
    real = flux_spotedit.SpotSelect

    def spy(self, x0, y, threshold=0.1, method="L4", metric=None):
        if conf.threshold is None:  # tau = the median score at the first selective step: half the tokens settle
            real(self, x0, y, threshold=0.0, method=method)  # builds their judge
            if method == "L4":
                s = ((x0 - y).abs() ** 4).mean(dim=-1).mean(dim=0)
            elif method == "cosine":
                s = torch.cosine_similarity(y.flatten(0, 1), x0.flatten(0, 1), dim=-1)
            else:
                s = self.metric(x0, y, image_size=(1024, 1024), vae_downsample_factor=8).mean(dim=0)
            conf.threshold = threshold = _between_middle(s)
        r = real(self, x0, y, threshold=threshold, method=method)
        counts.append(int((~r).sum()))
        return r

    flux_spotedit.SpotSelect = spy
    try:
        out = flux_spotedit.generate(pipe, image=y_model, prompt="x", height=1024, width=1024,
                                     num_inference_steps=steps, guidance_scale=3.5, output_type="latent",
                                     config=conf)
    finally:
        flux_spotedit.SpotSelect = real
    return unpack(out.images, SIDE, SIDE), sched.sigmas.clone(), counts, conf.threshold


def ours_flux(model, prompt, pooled, y_model, noise, sigmas, judge, tau, vae):
    y_user = model.model.process_latent_out(y_model)
    cond = [[prompt, {"pooled_output": pooled, "guidance": 3.5, "reference_latents": [y_user]}]]
    sel = SpotSelector.execute(judge, tau, 0, "union", vae=vae if judge == "perceptual" else None).args[0]
    patched = SpotFusionSampler.execute(model, sel, 4, 9, "cos2", "authors code").args[0]
    with torch.no_grad():
        out = comfy.sample.sample_custom(patched, noise, 1.0, comfy.samplers.sampler_object("euler"), sigmas,
                                         cond, cond, torch.zeros_like(noise), disable_pbar=True, seed=0)
    state = patched.model_options["transformer_options"]["precise_edit_spot"]
    counts = [int(a.sum()) for s, full, a in state.last.history if not full]
    return model.model.process_latent_in(out), counts


def qwen_to_diffusers(model, cfg):
    """Qwen-Image in ComfyUI uses the diffusers key names; build the diffusers model and load them."""
    from diffusers import QwenImageTransformer2DModel

    tr = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=cfg["num_layers"],
                                     attention_head_dim=cfg["attention_head_dim"],
                                     num_attention_heads=cfg["num_attention_heads"],
                                     joint_attention_dim=cfg["joint_attention_dim"], guidance_embeds=False,
                                     axes_dims_rope=tuple(cfg["axes_dims_rope"]))
    src = model.model.diffusion_model.state_dict()
    missing, unexpected = tr.load_state_dict({k: v for k, v in src.items() if k in tr.state_dict()}, strict=False)
    if missing:
        raise SystemExit(f"weight conversion incomplete: missing {missing[:5]}")
    return tr.eval()


class _DropTxtSeqLens(torch.nn.Module):
    """Their pipeline passes ``txt_seq_lens``, which newer diffusers dropped; nothing else changes."""

    def __init__(self, tr):
        super().__init__()
        self.tr = tr
        self.config = tr.config

    def forward(self, *a, txt_seq_lens=None, **k):
        return self.tr(*a, **k)

    def cache_context(self, name):
        return self.tr.cache_context(name)

    @property
    def dtype(self):
        return self.tr.dtype


def authors_qwen(checkout, tr, prompt, y_model, noise, steps, judge, tau, dilation, dvae=None):
    sys.path.insert(0, str(Path(checkout)))
    from diffusers import FlowMatchEulerDiscreteScheduler
    from Qwen_image_edit import qwen_spotedit
    from Qwen_image_edit.qwen_spot_ultis import SpotEditConfig, dilate_uncached_mask

    from precise_edit.kernels.spot import authors_full_steps

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = types.SimpleNamespace(
        vae_scale_factor=8, latent_channels=16, transformer=_DropTxtSeqLens(tr), scheduler=sched,
        _execution_device=torch.device("cpu"), check_inputs=lambda *a, **k: None,
        image_processor=types.SimpleNamespace(resize=lambda img, h, w: img,
                                              preprocess=lambda img, h, w: torch.zeros(1, 3, 8, 8)),
        encode_prompt=lambda **k: (prompt, None),
        prepare_latents=lambda *a, **k: (pack(noise), pack(y_model)),
        progress_bar=lambda total: contextlib.nullcontext(types.SimpleNamespace(update=lambda: None)),
        maybe_free_model_hooks=lambda: None, interrupt=False, attention_kwargs=None, vae=dvae,
    )
    warm, resets = authors_full_steps(steps)
    conf = SpotEditConfig(threshold=tau, judge_method={"perceptual": "LPIPS"}.get(judge, judge),
                          initial_steps=warm, reset_steps=sorted(resets), dilation_radius=dilation)
    counts = []
    real = qwen_spotedit.Spotselect

    def spy(self, x0, y, threshold=0.1, method="L4"):
        if conf.threshold is None:
            if method == "LPIPS":
                real(self, x0, y, threshold=0.0, method=method)  # builds their judge
                s = self._lpips_metric(x0, y, image_size=(1024, 1024), vae_downsample_factor=8).mean(dim=0)
            else:
                s = ((x0 - y).abs() ** 4).mean(dim=-1).mean(dim=0) if method == "L4" else \
                    torch.cosine_similarity(y.flatten(0, 1), x0.flatten(0, 1), dim=-1)
            conf.threshold = threshold = _between_middle(s)
        r = real(self, x0, y, threshold=threshold, method=method)
        counts.append(int(dilate_uncached_mask(r, SIDE // 2, SIDE // 2, dilation).logical_not().sum()))
        return r

    qwen_spotedit.Spotselect = spy
    try:
        img = types.SimpleNamespace(size=(1024, 1024))  # their reference is always scaled to 1024x1024
        out = qwen_spotedit.generate(pipe, image=img, prompt="x", num_inference_steps=steps, true_cfg_scale=1.0,
                                     output_type="latent", config=conf)
    finally:
        qwen_spotedit.Spotselect = real
    return unpack(out[0] if isinstance(out, tuple) else out.images, SIDE, SIDE), sched.sigmas.clone(), counts, \
        conf.threshold


def ours_qwen(model, prompt, y_model, noise, sigmas, judge, tau, dilation, vae=None):
    y5 = y_model.unsqueeze(2)
    y_user = model.model.process_latent_out(y5)
    cond = [[prompt, {"reference_latents": [y_user]}]]
    sel = SpotSelector.execute(judge, tau, dilation, "union", vae=vae if judge == "perceptual" else None).args[0]
    patched = SpotFusionSampler.execute(model, sel, 4, 9, "cos2", "authors code").args[0]
    with torch.no_grad():
        out = comfy.sample.sample_custom(patched, noise.unsqueeze(2), 1.0, comfy.samplers.sampler_object("euler"),
                                         sigmas, cond, cond, torch.zeros_like(y5), disable_pbar=True, seed=0)
    state = patched.model_options["transformer_options"]["precise_edit_spot"]
    counts, prev = [], True
    for s, full, a in state.last.history:  # one selection per span between full steps
        if not full and prev:
            counts.append(int(a.sum()))
        prev = full
    return model.model.process_latent_in(out)[:, :, 0], counts


def compare_qwen(args):
    cfg = tm.qwen_config(hidden=args.hidden, heads=2, layers=2)
    model = tm.tiny_qwen_image(0, hidden=args.hidden, heads=2, layers=2)
    tr = qwen_to_diffusers(model, cfg)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randn(1, 8, tm.QWEN_CONTEXT, generator=gen)
    y_model = torch.randn(1, 16, SIDE, SIDE, generator=gen)
    noise = torch.randn(1, 16, SIDE, SIDE, generator=gen)
    print()
    n = (SIDE // 2) ** 2
    print(f"Qwen-Image-Edit architecture, hidden {args.hidden}, {n} image + {n} reference + 8 text tokens, "
          f"{args.steps} steps, fp32 CPU, dilation 1")
    print("| judge | tau | max abs diff of the final latent | mean abs | computed tokens per selective step "
          "(ours vs theirs) |")
    print("|---|---|---|---|---|")
    dvae, vae = tiny_qwen_vae() if "perceptual" in args.judges else (None, None)
    for judge in args.judges:
        theirs, sigmas, c_theirs, tau = authors_qwen(args.checkout, tr, prompt, y_model, noise, args.steps, judge,
                                                     args.tau, 1, dvae)
        ours, c_ours = ours_qwen(model, prompt, y_model, noise, sigmas.float(), judge, tau, 1, vae)
        d = (ours.float() - theirs.float()).abs()
        same = "equal" if c_ours == c_theirs else f"{c_ours} vs {c_theirs}"
        print(f"| {judge} | {tau:.4g} | {d.max():.2e} | {d.mean():.2e} | {same} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkout", help="path of a checkout of Biangbiang0321/SpotEdit (4830b06)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--judges", nargs="+", default=["L4", "perceptual"])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--families", nargs="+", default=["flux", "qwen_image"])
    p.add_argument("--tau", type=float, default=None,
                   help="threshold; default: the median score of the authors' first selective step "
                        "(random weights do not settle at the published 0.2)")
    p.add_argument("--side", type=int, default=128,
                   help="latent side (their perceptual judge needs 128; L4 and cosine run at any even side)")
    args = p.parse_args()
    global SIDE
    SIDE = args.side
    if SIDE != 128 and ("perceptual" in args.judges or "qwen_image" in args.families):
        raise SystemExit("the authors' perceptual judge and their Qwen-Image-Edit pipeline assume a 1024x1024 "
                         "image: use --side 128")
    torch.set_grad_enabled(False)
    if "qwen_image" in args.families:
        compare_qwen(args)
    if "flux" not in args.families:
        return
    cfg = tm.flux_config(hidden=args.hidden, heads=2, depth=2, single=2)
    model = tm.tiny_flux(0, hidden=args.hidden, heads=2, depth=2, single=2)
    dm_sd = flux_to_diffusers_sd(model, cfg)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randn(1, 8, tm.FLUX_CONTEXT, generator=gen)
    pooled = torch.randn(1, tm.FLUX_VEC, generator=gen)
    y_model = torch.randn(1, 16, SIDE, SIDE, generator=gen)
    noise = torch.randn(1, 16, SIDE, SIDE, generator=gen)
    dvae, vae = tiny_kl_vae()
    n = (SIDE // 2) ** 2
    print(f"FLUX.1 Kontext architecture, hidden {args.hidden}, {n} image + {n} reference + 8 text tokens, "
          f"{args.steps} steps, fp32 CPU")
    print("| judge | tau | max abs diff of the final latent | mean abs | computed tokens per selective step "
          "(ours vs theirs) |")
    print("|---|---|---|---|---|")
    for judge in args.judges:
        tau = args.tau
        theirs, sigmas, c_theirs, tau = authors_flux(args.checkout, dm_sd, cfg, prompt, pooled, y_model, noise,
                                                args.steps, judge, tau, dvae)
        ours, c_ours = ours_flux(model, prompt, pooled, y_model, noise, sigmas.float(), judge, tau, vae)
        d = (ours.float() - theirs.float()).abs()
        same = "equal" if c_ours == c_theirs else f"{c_ours} vs {c_theirs}"
        print(f"| {judge} | {tau:.4g} | {d.max():.2e} | {d.mean():.2e} | {same} |")


if __name__ == "__main__":
    main()

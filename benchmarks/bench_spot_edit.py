"""SpotEdit benchmark: wall-clock speed-up of SpotFusionSampler over the unpatched model.

Prints a table; not a test. ComfyUI's own FLUX (Kontext use: reference tokens) and
Qwen-Image architectures at hidden 1024 with random weights, CPU, fp32: 1024 image tokens
+ 1024 reference tokens + text, the settled set forced by a user mask that leaves 25% of
the image active (75% settled), Euler through ComfyUI's standard sampler. Then the same
with ComfyUI core's EasyCache on top.

``--judge`` adds the rows with the real perceptual judge at 50 steps: a VAE decoder at the
real width of the model's VAE (FLUX: the KL decoder, 512 channels at the lowest level;
Qwen-Image: the Wan 2.1 decoder, dim 96; ``--vae-divide`` narrows it), random weights; SpotSelector in ``intersect`` mode
with the same 25% mask, so the judge runs at its full cost on every selective step while
the computed tokens stay those of the mask (random weights never settle on the source by
themselves). Rows: the pack's defaults (warm-up 4, a full step every 9) and the authors'
schedule ("authors code": steps 0-3, 13, 22, 31), with the selector's own time per
selective step. Every figure is the median of ``--runs`` interleaved runs. Run from the
repository root:

    .venv/bin/python benchmarks/bench_spot_edit.py [--steps 20] [--families flux qwen_image]
    .venv/bin/python benchmarks/bench_spot_edit.py --judge [--judge-steps 50] [--side 32]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import comfy.model_management  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
import tiny_models as tm  # noqa: E402
from comfy_extras.nodes_easycache import EasyCacheNode  # noqa: E402
from precise_edit.kernels import spot  # noqa: E402
from precise_edit.nodes.spot_edit import patch as spot_patch  # noqa: E402
from precise_edit.nodes.spot_edit import vae_features  # noqa: E402
from precise_edit.nodes.spot_edit.nodes import SpotEditPreview, SpotFusionSampler, SpotSelector  # noqa: E402


def build(family, args):
    heads = args.hidden // 128
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if family == "flux":
        cfg = tm.flux_config(hidden=args.hidden, heads=heads, depth=args.depth, single=args.single)
        return tm._patcher(comfy.supported_models.Flux(cfg), 0, dtype=dtype)
    return tm._patcher(comfy.supported_models.QwenImage(tm.qwen_config(hidden=args.hidden, heads=heads,
                                                                       layers=args.layers)), 0, dtype=dtype)


def run(model, family, args, y, seed=4):
    shape = y.shape
    gen = torch.Generator().manual_seed(seed)
    ctx = tm.FLUX_CONTEXT if family == "flux" else tm.QWEN_CONTEXT
    extra = {"pooled_output": torch.randn(1, tm.FLUX_VEC, generator=gen), "guidance": 2.5} if family == "flux" else {}
    cond = [[torch.randn(1, args.text, ctx, generator=gen), {**extra, "reference_latents": [y]}]]
    noise = torch.randn(shape, generator=gen)
    t = time.perf_counter()
    with torch.no_grad():
        out = comfy.sample.sample(model, noise, args.steps, 1.0, "euler", "simple", cond, cond, torch.zeros(shape),
                                  denoise=1.0, seed=0, disable_pbar=True)
    return time.perf_counter() - t, out


def real_width_vae(family, divide=1):
    """A VAE decoder at the real width of the model's VAE divided by ``divide``, random weights."""
    if family == "qwen_image":
        return tm.tiny_wan_vae(0, dim=96 // divide)
    from comfy.ldm.modules.diffusionmodules.model import Decoder

    # The judge reads the lowest levels only (conv_in, mid block, first up block: 512 channels in the
    # real decoder). Past 1/4 the upper levels would fall under GroupNorm's 32 groups: keep every level
    # at the lowest level's width then (the judge never runs them).
    ch_mult = (1, 2, 4, 4) if divide <= 4 else (4, 4, 4, 4)
    dec = Decoder(ch=128 // divide, out_ch=3, ch_mult=ch_mult, num_res_blocks=2, attn_resolutions=[], in_channels=3,
                  resolution=256, z_channels=16)
    tm._fill(dec, 0, scale=0.02)
    dev = comfy.model_management.get_torch_device()  # the GPU where one is used (PRECISE_EDIT_TEST_DEVICE=cuda)
    return types.SimpleNamespace(first_stage_model=types.SimpleNamespace(decoder=dec.eval().to(dev)), patcher=None,
                                 device=dev, vae_dtype=torch.float32)


def judge_rows(args):
    """The perceptual judge at 50 steps: pack defaults vs the authors' schedule, medians of interleaved runs."""
    jargs = argparse.Namespace(**{**vars(args), "steps": args.judge_steps})
    side = args.side
    mask = torch.zeros(1, side * 8, side * 8)
    mask[0, : side * 4, : side * 4] = 1
    timer = {"t": 0.0, "n": 0}
    real_scores = spot_patch.Selector.token_scores

    cuda = comfy.model_management.get_torch_device().type == "cuda"

    def timed(self, *a, **k):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            return real_scores(self, *a, **k)
        finally:
            if cuda:
                torch.cuda.synchronize()
            timer["t"] += time.perf_counter() - t
            timer["n"] += 1

    spot_patch.Selector.token_scores = timed
    shares = {}
    print()
    print(f"Perceptual judge (VAE decoder at 1/{args.vae_divide} of the real width), {args.judge_steps} steps, {side * side // 4} image tokens, "
          f"intersect with the 25% mask; medians of {args.runs} interleaved runs")
    print()
    print("| model | run | time | speed-up | ideal (token counts) | share of ideal | selector per selective step |")
    print("|---|---|---|---|---|---|---|")
    for family in args.families:
        model = build(family, args)
        shape = (1, 16, side, side) if family == "flux" else (1, 16, 1, side, side)
        y = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        vae = real_width_vae(family, args.vae_divide)
        sel = SpotSelector.execute("perceptual", 0.2 if family == "flux" else 0.15, 0, "intersect", vae=vae,
                                   mask=mask).args[0]
        variants = {"unpatched": model,
                    "SpotEdit, pack defaults": SpotFusionSampler.execute(model, sel, 4, 9, "cos2").args[0],
                    "SpotEdit, authors' schedule": SpotFusionSampler.execute(model, sel, 4, 9, "cos2",
                                                                            "authors code").args[0]}
        run(model, family, argparse.Namespace(**{**vars(args), "steps": 2}), y)  # warm-up
        with FlopCounterMode(display=False) as fc:
            run(model, family, argparse.Namespace(**{**vars(args), "steps": 1}), y)
        step_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vae_features.decoder_features(vae, y)
        shares[family] = fc.get_total_flops() / step_flops
        times = {k: [] for k in variants}
        sel_cost = {k: [] for k in variants}
        fracs = {}
        for _ in range(args.runs):
            for name, m in variants.items():
                timer.update(t=0.0, n=0)
                t, out = run(m, family, jargs, y)
                times[name].append(t)
                if name != "unpatched":
                    sel_cost[name].append(timer["t"] / max(1, timer["n"]))
                    fracs[name] = SpotEditPreview.execute(m, {"samples": out}, -1).args[1]
        label = "FLUX.1 Kontext arch." if family == "flux" else "Qwen-Image(-Edit) arch."
        t_base = statistics.median(times["unpatched"])
        print(f"| {label} | unpatched | {t_base:.1f} s | 1.00x | | | |")
        n_img = side * side // 4
        for name in list(variants)[1:]:
            t = statistics.median(times[name])
            fr = fracs[name]
            full_tok = args.text + 2 * n_img
            # ideal from the run's own fraction: full steps count text+image+reference, selective text+active
            st = spot_patch.state_of(variants[name]).fractions()
            cost = sum(full_tok if full else args.text + f * n_img for _, full, f in st)
            ideal = len(st) * full_tok / cost
            print(f"| {label} | {name} ({fr:.0%} of image tokens computed) | {t:.1f} s | {t_base / t:.2f}x | "
                  f"{ideal:.2f}x | {t_base / t / ideal:.0%} | {statistics.median(sel_cost[name]) * 1000:.0f} ms |")
        del model, variants
    spot_patch.Selector.token_scores = real_scores
    print()
    print("Judge's share of a full model step, in FLOPs (torch's FlopCounterMode, one call / one step): "
          + ", ".join(f"{f}: {v:.1%}" for f, v in shares.items()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--depth", type=int, default=2, help="FLUX double blocks")
    p.add_argument("--single", type=int, default=2, help="FLUX single blocks")
    p.add_argument("--layers", type=int, default=3, help="Qwen-Image blocks")
    p.add_argument("--side", type=int, default=64, help="latent side (64 -> 1024 image tokens)")
    p.add_argument("--text", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--reset", type=int, default=9)
    p.add_argument("--easycache", type=float, default=0.2, help="EasyCache reuse_threshold")
    p.add_argument("--families", nargs="+", default=["flux", "qwen_image"])
    p.add_argument("--judge", action="store_true", help="only the rows with the real perceptual judge")
    p.add_argument("--judge-steps", type=int, default=50)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="the model's weights")
    p.add_argument("--vae-divide", type=int, default=1, help="judge rows: VAE decoder width = real width / this")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)"
          + (f", {torch.cuda.get_device_name()} (the model and judge run there)"
             if comfy.model_management.get_torch_device().type == "cuda" else ""))
    if args.judge:
        judge_rows(args)
        return
    print(f"hidden {args.hidden}, {args.side ** 2 // 4} image + {args.side ** 2 // 4} reference + {args.text} text "
          f"tokens, {args.steps} Euler steps, fp32 CPU; warm-up {args.warmup}, reset every {args.reset}, fusion "
          f"cos2; 25% of the image active (user mask, replace); SpotEdit and unpatched: medians of {args.runs} "
          f"interleaved runs, EasyCache rows: one run")
    print()
    print("| model | run | time | speed-up | ideal (token counts) | share of ideal |")
    print("|---|---|---|---|---|---|")
    side = args.side
    mask = torch.zeros(1, side * 8, side * 8)
    mask[0, : side * 4, : side * 4] = 1  # a quarter of the image may change
    for family in args.families:
        model = build(family, args)
        shape = (1, 16, side, side) if family == "flux" else (1, 16, 1, side, side)
        y = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        n_img = side * side // 4
        sel = SpotSelector.execute("L4", 0.2, 0, "replace", mask=mask).args[0]
        patched = SpotFusionSampler.execute(model, sel, args.warmup, args.reset, "cos2").args[0]
        run(model, family, argparse.Namespace(**{**vars(args), "steps": 2}), y)  # warm-up
        t_bases, t_spots = [], []
        for _ in range(args.runs):  # interleaved; medians
            t_bases.append(run(model, family, args, y)[0])
            t, out = run(patched, family, args, y)
            t_spots.append(t)
        t_base, t_spot = statistics.median(t_bases), statistics.median(t_spots)
        fr = SpotEditPreview.execute(patched, {"samples": out}, -1).args[1]
        settled = torch.ones(shape, dtype=torch.bool)
        settled[..., : side // 2, : side // 2] = False
        assert torch.equal(out[settled], y[settled]), "settled tokens must end on the reference"
        full = args.text + 2 * n_img
        sel_tokens = args.text + n_img // 4
        n_full = sum(spot.is_full_step(i, args.warmup, args.reset) for i in range(args.steps))
        ideal = args.steps * full / (n_full * full + (args.steps - n_full) * sel_tokens)
        name = "FLUX.1 Kontext arch." if family == "flux" else "Qwen-Image(-Edit) arch."
        print(f"| {name} | unpatched | {t_base:.1f} s | 1.00x | | |")
        print(f"| {name} | SpotEdit ({fr:.0%} of image tokens computed) | {t_spot:.1f} s | {t_base / t_spot:.2f}x | "
              f"{ideal:.2f}x | {t_base / t_spot / ideal:.0%} |")
        ec = EasyCacheNode.execute(patched, args.easycache, 0.15, 0.95, False).args[0]
        t_ec, out_ec = run(ec, family, args, y)
        assert torch.equal(out_ec[settled], y[settled])
        ec_only = EasyCacheNode.execute(model, args.easycache, 0.15, 0.95, False).args[0]
        t_eco, _ = run(ec_only, family, args, y)
        print(f"| {name} | EasyCache alone (reuse {args.easycache}) | {t_eco:.1f} s | {t_base / t_eco:.2f}x | | |")
        print(f"| {name} | SpotEdit + EasyCache | {t_ec:.1f} s | {t_base / t_ec:.2f}x | | |")
        del model, patched, ec, ec_only


if __name__ == "__main__":
    main()

"""SpotEdit benchmark: wall-clock speed-up of SpotFusionSampler over the unpatched model.

Prints a table; not a test. ComfyUI's own FLUX (Kontext use: reference tokens) and
Qwen-Image architectures at hidden 1024 with random weights, CPU, fp32: 1024 image tokens
+ 1024 reference tokens + text, the settled set forced by a user mask that leaves 25% of
the image active (75% settled), Euler through ComfyUI's standard sampler. Then the same
with ComfyUI core's EasyCache on top. Run from the repository root:

    .venv/bin/python benchmarks/bench_spot_edit.py [--steps 20] [--families flux qwen_image]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401

import torch  # noqa: E402

import comfy.sample  # noqa: E402
import tiny_models as tm  # noqa: E402
from comfy_extras.nodes_easycache import EasyCacheNode  # noqa: E402
from precise_edit.kernels import spot  # noqa: E402
from precise_edit.nodes.spot_edit.nodes import SpotEditPreview, SpotFusionSampler, SpotSelector  # noqa: E402


def build(family, args):
    heads = args.hidden // 128
    if family == "flux":
        return tm.tiny_flux(0, hidden=args.hidden, heads=heads, depth=args.depth, single=args.single)
    return tm.tiny_qwen_image(0, hidden=args.hidden, heads=heads, layers=args.layers)


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
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"hidden {args.hidden}, {args.side ** 2 // 4} image + {args.side ** 2 // 4} reference + {args.text} text "
          f"tokens, {args.steps} Euler steps, fp32 CPU; warm-up {args.warmup}, reset every {args.reset}, fusion "
          f"cos2; 25% of the image active (user mask, replace)")
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
        t_base, base = run(model, family, args, y)
        t_spot, out = run(patched, family, args, y)
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

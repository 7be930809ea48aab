"""KV-Edit benchmark: foreground-only denoising speed, cache size, inversion-free memory.

Prints a table; not a test. Runs ComfyUI's own FLUX at hidden 1024 with random weights on
the CPU in fp32: 1024 image tokens (a 512x512 image's 64x64 latent), 256 text tokens, a
mask of 25% of the image. Run from the repository root after `make test` set things up:

    .venv/bin/python benchmarks/bench_kv_edit.py [--steps 8] [--depth 2 --single 4]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401  (ComfyUI on sys.path, CPU, pack importable as precise_edit)

import torch  # noqa: E402

import tiny_models as tm  # noqa: E402
from precise_edit.kernels.kv_store import bytes_per_token_step  # noqa: E402
from precise_edit.kernels.token_mask import build_token_masks  # noqa: E402
from precise_edit.nodes.kv_edit import engine as ke  # noqa: E402

FLUX_DEV_BLOCKS, FLUX_DEV_HIDDEN, AUTHORS_BYTES = 57, 3072, 700_416


def build(args):
    model = tm.tiny_flux(0, hidden=args.hidden, heads=args.hidden // 128, depth=args.depth, single=args.single)
    return model


def text_cond(tokens: int, guidance: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, tm.FLUX_CONTEXT, generator=gen),
             {"pooled_output": torch.randn(1, tm.FLUX_VEC, generator=gen), "guidance": guidance}]]


def timed_edit(model, record, cond, skip):
    t = time.perf_counter()
    out = ke.edit(model, record, cond, skip)
    return time.perf_counter() - t, out


def speed(args, model):
    side = args.latent
    latent = torch.randn(1, 16, side, side, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, side * 8, side * 8)
    q = side * 8 // 2  # a square of 25% of the image, on the token grid
    mask[0, q // 2: q // 2 + q, q // 2: q // 2 + q] = 1
    masks = build_token_masks(mask, (side, side), 2)
    n_img = masks.flat.shape[1]
    n_fg = int(masks.flat.sum())
    sigmas = ke.default_sigmas(model, args.steps)
    src, tgt = text_cond(args.text, 1.5, 2), text_cond(args.text, 5.5, 3)
    t = time.perf_counter()
    rec = ke.invert(model, latent, masks, src, sigmas, storage="bf16").record
    t_inv = time.perf_counter() - t
    full = rec.converted()
    full.token_mask = torch.ones_like(rec.token_mask)  # same loop, every token computed, no cache
    ke.edit(model, rec, tgt, args.steps - 1)  # warm-up (one step each)
    ke.edit(model, full, tgt, args.steps - 1)
    t_full, _ = timed_edit(model, full, tgt, 0)
    t_kv, out = timed_edit(model, rec, tgt, 0)
    bg = ~rec.latent_mask[:, None].expand_as(out)
    assert torch.equal(out[bg], latent[bg])
    computed = (args.text + n_fg) / (args.text + n_img)
    ideal = 1 / computed
    return {"n_img": n_img, "n_fg": n_fg, "t_inv": t_inv, "t_full": t_full, "t_kv": t_kv,
            "speedup": t_full / t_kv, "ideal": ideal, "ideal_img": n_img / n_fg,
            "bytes": rec.store.nbytes(), "n_bg": rec.background_tokens, "blocks": len(rec.blocks)}


def inversion_free_peak(steps: int, args) -> tuple[int, int]:
    """(peak key/value bytes, peak RSS bytes) of one inversion-free edit, in a fresh process."""
    code = f"""
import sys, resource, torch
sys.path.insert(0, {str(ROOT / 'tests')!r}); sys.argv = ['x']
import conftest, tiny_models as tm
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
from bench_kv_edit import text_cond
from precise_edit.kernels.token_mask import build_token_masks
from precise_edit.nodes.kv_edit import engine as ke
model = tm.tiny_flux(0, hidden={args.hidden}, heads={args.hidden // 128}, depth={args.depth}, single={args.single})
side = {args.mem_latent}
latent = torch.randn(1, 16, side, side, generator=torch.Generator().manual_seed(1))
mask = torch.zeros(1, side * 8, side * 8); q = side * 4; mask[0, q // 2: q // 2 + q, q // 2: q // 2 + q] = 1
masks = build_token_masks(mask, (side, side), 2)
out, store = ke.inversion_free(model, latent, masks, text_cond({args.text}, 1.5, 2), text_cond({args.text}, 5.5, 3),
                               ke.default_sigmas(model, {steps}), skip=0, storage="bf16")
print(store.peak_bytes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    kv, rss = res.stdout.split()[-2:]
    return int(kv), int(rss)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--depth", type=int, default=2, help="double blocks")
    p.add_argument("--single", type=int, default=4, help="single blocks")
    p.add_argument("--latent", type=int, default=64, help="latent side (64 -> 1024 image tokens)")
    p.add_argument("--text", type=int, default=256, help="text tokens")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--mem-latent", type=int, default=32, help="latent side for the memory runs")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {platform.platform()}")
    print(f"model: ComfyUI FLUX, hidden {args.hidden}, {args.hidden // 128} heads, {args.depth} double + "
          f"{args.single} single blocks, fp32, CPU; {args.steps} steps, skip 0")
    model = build(args)
    r = speed(args, model)
    print()
    print("| denoising (KV-Edit) | tokens computed (text + image) | time | speed-up |")
    print("|---|---|---|---|")
    print(f"| every token | {args.text} + {r['n_img']} | {r['t_full']:.2f} s | 1.00x |")
    print(f"| foreground only, cached background | {args.text} + {r['n_fg']} | {r['t_kv']:.2f} s | "
          f"{r['speedup']:.2f}x |")
    print(f"| ideal (inverse of the computed-token fraction) | | | {r['ideal']:.2f}x "
          f"(image tokens alone: {r['ideal_img']:.2f}x) |")
    print(f"| reached | | | {r['speedup'] / r['ideal']:.0%} of ideal |")
    print(f"\ninversion ({args.steps} steps, recording): {r['t_inv']:.2f} s; record "
          f"{r['bytes'] / 2**20:.1f} MiB for {r['n_bg']} background tokens")
    measured = r["bytes"] / (r["n_bg"] * args.steps)
    expect = bytes_per_token_step(r["blocks"], args.hidden, "bf16")
    assert measured == expect, (measured, expect)
    print(f"measured bytes per background token per step: {measured:,.0f} "
          f"(= 2 x {r['blocks']} blocks x {args.hidden} x 2 bytes)")
    print()
    print("| cache at FLUX-dev size (57 blocks, hidden 3072), 1024x1024 (4096 tokens), 28 steps | "
          "bytes/token/step | 25% mask | 50% mask | 75% mask |")
    print("|---|---|---|---|---|")
    tokens, steps = 4096, 28
    authors = AUTHORS_BYTES * tokens * steps
    print(f"| authors (every image token, bf16) | {AUTHORS_BYTES:,} | " + " | ".join(
        [f"{authors / 2**30:.1f} GiB"] * 3) + " |")
    for storage in ("bf16", "fp8"):
        per = bytes_per_token_step(FLUX_DEV_BLOCKS, FLUX_DEV_HIDDEN, storage)
        cells = []
        for frac in (0.25, 0.5, 0.75):
            total = per * tokens * (1 - frac) * steps
            if storage == "fp8":
                total += 2 * 4 * FLUX_DEV_BLOCKS * steps  # one float32 scale per tensor
            cells.append(f"{total / 2**30:.1f} GiB ({total / authors:.3f} of authors')")
        print(f"| this pack, background only, {storage} | {per:,} | " + " | ".join(cells) + " |")
    print()
    print(f"| inversion-free, {args.mem_latent ** 2 // 4} image tokens | peak key/value bytes | peak process RSS |")
    print("|---|---|---|")
    peaks = {}
    for steps in (8, 28):
        peaks[steps] = inversion_free_peak(steps, args)
        print(f"| {steps} steps | {peaks[steps][0] / 2**20:.2f} MiB | {peaks[steps][1] / 2**20:.0f} MiB |")
    print(f"| ratio 28/8 | {peaks[28][0] / peaks[8][0]:.3f} | {peaks[28][1] / peaks[8][1]:.3f} |")


if __name__ == "__main__":
    main()

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
import statistics
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


class AuthorsStyle:
    """The authors' loop shape on the same ComfyUI model: direct calls of the diffusion model
    (no guider, no sampler), keys/values of every image token kept by reference in a dict
    (their ``.cpu()`` is a no-op on the CPU), the background gathered when replayed (their
    scatter of the foreground into the cached keys costs the same), the Euler updates inline.
    What ComfyUI's FLUX computes is shared with the pack, so the ratio isolates the pack's own
    loop overhead (guider, probes, record store, casts)."""

    def __init__(self, model, text_tokens: int):
        from precise_edit.nodes.flux_tokens import TokenController

        self.dm = model.model.diffusion_model
        self.ctl = TokenController(len(self.dm.single_blocks), "flux")
        self.to = {}
        self.ctl.install({"transformer_options": self.to})
        self.feature = {}

    def _call(self, x, s, cond):
        txt, extra = cond[0]
        return self.dm(x, torch.full((1,), s), txt, y=extra["pooled_output"],
                       guidance=torch.full((1,), extra["guidance"]), transformer_options=self.to)

    @torch.no_grad()
    def invert(self, z, sigmas, cond, flat):
        from precise_edit.nodes.flux_tokens import TokenPlan

        n = sigmas.numel() - 1
        self.feature[n] = z
        for i in reversed(range(n)):
            def rec(block, k, v, i=i):
                self.feature[(i, block)] = (k, v)
            self.ctl.plan = TokenPlan(n_img=flat.numel(), record_all=True, record=rec)
            z = z + (float(sigmas[i]) - float(sigmas[i + 1])) * self._call(z, float(sigmas[i + 1]), cond)
            self.ctl.plan = None
            self.feature[i] = z
        return z

    @torch.no_grad()
    def denoise(self, x0, sigmas, cond, flat, latent_mask, skip):
        from precise_edit.nodes.flux_tokens import TokenPlan

        n = sigmas.numel() - 1
        bg = (~flat).nonzero().flatten()
        fg = flat.nonzero().flatten()
        m = latent_mask[:, None]
        x = self.feature[skip]
        for i in range(skip, n):
            def cached(block, dev, dt, i=i):
                k, v = self.feature[(i, block)]
                return k[:, :, bg], v[:, :, bg]
            self.ctl.plan = TokenPlan(n_img=flat.numel(), keep=fg, cached=cached, cached_bias=1.0)
            v = self._call(x, float(sigmas[i]), cond)
            self.ctl.plan = None
            x = torch.where(m, x + (float(sigmas[i + 1]) - float(sigmas[i])) * v, self.feature[i + 1])
        return torch.where(m, x, x0)


def loop_overhead(args, model, runs: int):
    """Medians of ``runs`` interleaved timings: pack inversion/edit vs the authors-style loop."""
    side = args.latent
    user = torch.randn(1, 16, side, side, generator=torch.Generator().manual_seed(1))
    z = model.model.latent_format.process_in(user.clone())
    mask = torch.zeros(1, side * 8, side * 8)
    q = side * 8 // 2
    mask[0, q // 2: q // 2 + q, q // 2: q // 2 + q] = 1
    masks = build_token_masks(mask, (side, side), 2)
    flat = masks.flat[0]
    sigmas = ke.default_sigmas(model, args.steps)
    src, tgt = text_cond(args.text, 1.5, 2), text_cond(args.text, 5.5, 3)
    skip = args.skip
    times = {k: [] for k in ("inv_bf16", "inv_fp32", "edit_bf16", "a_inv", "a_edit")}
    for r in range(runs + 1):  # the first round warms up and is dropped
        t = time.perf_counter()
        rec = ke.invert(model, user, masks, src, sigmas, storage="bf16").record
        t1 = time.perf_counter()
        rec32 = ke.invert(model, user, masks, src, sigmas, storage="fp32").record
        t2 = time.perf_counter()
        ke.edit(model, rec, tgt, skip)
        t3 = time.perf_counter()
        a = AuthorsStyle(model, args.text)
        a.invert(z.clone(), sigmas, src, flat)
        t4 = time.perf_counter()
        a.denoise(z, sigmas, tgt, flat, masks.latent, skip)
        t5 = time.perf_counter()
        del rec, rec32, a
        if r:
            for k, v in zip(times, (t1 - t, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[k].append(v)
    return {k: statistics.median(v) for k, v in times.items()}


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
    p.add_argument("--skip", type=int, default=2, help="skip steps of the loop-overhead rows")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs of the loop-overhead rows (median)")
    p.add_argument("--only-overhead", action="store_true", help="print only the loop-overhead table")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {platform.platform()}")
    print(f"model: ComfyUI FLUX, hidden {args.hidden}, {args.hidden // 128} heads, {args.depth} double + "
          f"{args.single} single blocks, fp32, CPU; {args.steps} steps, skip 0")
    model = build(args)
    o = loop_overhead(args, model, args.runs)
    print()
    print(f"| loop (median of {args.runs} interleaved runs; {args.text} text + {args.latent ** 2 // 4} image tokens, "
          f"{args.steps} steps, skip {args.skip}) | time | vs authors-style loop |")
    print("|---|---|---|")
    print(f"| authors-style inversion (every image token kept by reference) | {o['a_inv']:.2f} s | 1.00x |")
    print(f"| KVInvert, bf16 record | {o['inv_bf16']:.2f} s | {o['inv_bf16'] / o['a_inv']:.2f}x |")
    print(f"| KVInvert, fp32 record | {o['inv_fp32']:.2f} s | {o['inv_fp32'] / o['a_inv']:.2f}x |")
    print(f"| authors-style denoise | {o['a_edit']:.2f} s | 1.00x |")
    print(f"| KVEditSampler, bf16 record | {o['edit_bf16']:.2f} s | {o['edit_bf16'] / o['a_edit']:.2f}x |")
    if args.only_overhead:
        return
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

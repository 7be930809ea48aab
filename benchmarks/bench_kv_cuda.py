"""KV-Edit on a CUDA GPU: where the record lives and how it is stored, side by side.

Prints a table; not a test (CI has no GPU). ComfyUI's own FLUX.1-dev class with random weights
in bf16 on the GPU (ComfyUI's model management loads it), an image of ``--side`` latent pixels
(128 -> 1024x1024, 4096 image tokens), a 25% edit region, KVInvert then KVEditSampler. For
each storage (bf16, fp8, int4) the record is kept on the GPU ("compute device"), in CPU memory
(fetched block by block on a side CUDA stream, ``--depth`` blocks ahead) and on disk
(streamed the same way). Every edit must equal the edit from the GPU-resident record bit for
bit; the table shows times (median of ``--runs`` interleaved runs after one warm-up), the GPU
memory the edit adds at its peak (above what was allocated when it started: the loaded model,
and the record itself when it lives on the GPU), the record's size and the most prefetched blocks in flight at once.
Run on a machine with a CUDA GPU, from the repository root:

    python benchmarks/bench_kv_cuda.py [--side 128] [--hidden 3072] [--steps 28] [--runs 3]
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PRECISE_EDIT_TEST_DEVICE", "cuda")  # the fixtures' set-up must not force the CPU
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
import tiny_models as tm  # noqa: E402
from precise_edit.nodes.kv_edit.nodes import KVEditSampler, KVInvert  # noqa: E402

PLACES = ["compute device", "cpu", "disk"]


def sync():
    torch.cuda.synchronize()


def collect(folder):
    """Free the last record (host, GPU and disk) before the next one is made."""
    gc.collect()
    mm.soft_empty_cache(True)
    for f in Path(folder).iterdir():
        f.unlink()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--depth", type=int, default=2, help="double blocks")
    ap.add_argument("--single", type=int, default=4, help="single blocks")
    ap.add_argument("--side", type=int, default=128, help="latent side (128 -> 4096 image tokens)")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--skip", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--storages", nargs="+", default=["bf16", "fp8", "int4"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kv_cuda: needs a CUDA GPU")
    dev = mm.get_torch_device()
    print(f"machine: {platform.machine()}, {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    cfg = tm.flux_config(hidden=args.hidden, heads=args.hidden // 128, depth=args.depth, single=args.single)
    model = tm._patcher(comfy.supported_models.Flux(cfg), 0, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    side = args.side
    gen = torch.Generator().manual_seed(1)
    latent = {"samples": torch.randn(1, 16, side, side, generator=gen)}
    mask = torch.zeros(1, side * 8, side * 8)
    mask[0, side * 2: side * 6, side * 3: side * 6] = 1  # 4/8 x 3/8 of the image: a 19% region
    src = tm.stub_conditioning("flux", "a photo of a cat on a sofa", guidance=1.5)
    tgt = tm.stub_conditioning("flux", "a photo of a dog on a sofa", guidance=5.5)
    print(f"FLUX.1-dev class, hidden {args.hidden}, {args.depth} double + {args.single} single blocks "
          f"({n_params / 1e9:.2f} B parameters, bf16), {side * side // 4} image tokens, {args.steps} steps, "
          f"skip {args.skip}; medians of {args.runs} interleaved runs")

    # the plain model once, for the memory it needs without any record
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        sync()
        mm.load_models_gpu([model])
        base_plain = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        comfy.sample.sample(model, noise, args.steps - args.skip, 1.0, "euler", "simple", tgt, tgt,
                            latent["samples"], denoise=1.0, seed=0, disable_pbar=True)
        sync()
    t_plain = time.perf_counter() - t
    peak_plain = torch.cuda.max_memory_allocated() - base_plain

    folder = tempfile.mkdtemp(prefix="kv_cuda_")
    rows = {}
    reference = {}
    for run in range(args.runs + 1):  # run 0 warms up and is not counted
        for storage in args.storages:
            for place in PLACES:
                sync()
                t = time.perf_counter()
                rec = KVInvert.execute(model, latent, mask, src, args.steps, False, storage, place, 0, "touched",
                                       0.0, folder if place == "disk" else "").args[0]
                sync()
                t_inv = time.perf_counter() - t
                store = rec.store
                most = [0]
                real_get = store.get

                def counting_get(*a, _real=real_get, _store=store, _most=most, **k):
                    out = _real(*a, **k)
                    _most[0] = max(_most[0], len(_store.in_flight()))
                    return out

                store.get = counting_get
                sync()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                out = KVEditSampler.execute(model, rec, tgt, seed=0, skip_steps=args.skip, reinit=False,
                                            attn_scale=1.0, mode="paper").args[0]["samples"]
                sync()
                t_edit = time.perf_counter() - t
                peak = torch.cuda.max_memory_allocated() - base
                left = len(store.in_flight())
                if place == "compute device":
                    reference[storage] = out
                same = torch.equal(out, reference[storage])
                if run == 0:
                    del rec, store, out
                    collect(folder)
                    continue
                r = rows.setdefault((storage, place), {"inv": [], "edit": [], "peak": [], "base": [], "most": 0, "same": True,
                                                         "size": store.nbytes(), "left": 0})
                r["inv"].append(t_inv)
                r["edit"].append(t_edit)
                r["peak"].append(peak)
                r["base"].append(base)
                r["most"] = max(r["most"], most[0])
                r["same"] &= same
                r["left"] = max(r["left"], left)
                del rec, store, out
                collect(folder)
    gib = 2 ** 30
    print()
    print(f"plain sampling ({args.steps - args.skip} steps, no record): {t_plain:.2f} s, peak GPU memory "
          f"{peak_plain / gib:.2f} GiB above the loaded model ({base_plain / gib:.2f} GiB)")
    print()
    print("| storage | record lives | record size | invert | edit | GPU memory at the edit's start | GPU memory the edit adds (peak) | most blocks in flight "
          "| left in flight after | edit equals the GPU-record edit |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for (storage, place), r in rows.items():
        print(f"| {storage} | {place} | {r['size'] / gib:.2f} GiB | {statistics.median(r['inv']):.2f} s | "
              f"{statistics.median(r['edit']):.2f} s | {statistics.median(r['base']) / gib:.2f} GiB | "
              f"{statistics.median(r['peak']) / gib:.2f} GiB | "
              f"{r['most'] if place != 'compute device' else '-'} | {r['left']} | {'yes' if r['same'] else 'NO'} |")


if __name__ == "__main__":
    main()

"""KV-Edit records at real size: disk streaming, 4/2-bit storage, peak memory. Prints tables;
not a test. Run from the repository root after `make test` set things up:

    .venv/bin/python benchmarks/bench_kv_disk.py [--folder /tmp/kv_bench] [--budget-gb 12] [--runs 3]

1. Record sizes at FLUX-dev 1024x1024, 28 steps, 25% mask (exact file layout) against the
   authors' 74.8 GiB (every image token, bf16).
2. A synthetic record of FLUX-dev's real per-block shapes (24 heads x 3072 background tokens x
   128 channels, 57 blocks) written to and streamed from disk, each phase in its own process:
   throughput, peak RSS, and the disk time per 1024^2 step (cold page cache: the file's pages
   are dropped with posix_fadvise before reading). Total on disk stays within --budget-gb.
3. A real edit on a FLUX-architecture model at hidden 1024 (random weights, CPU, fp32):
   record on disk vs in memory, bit-identical output, edit time (medians of interleaved runs),
   and peak RSS of fresh processes as the step count grows.
4. Quantization error on the tiny test model: max/mean |delta| of the final latent on the
   foreground against the bf16 record, PSNR of the decoded foreground (torchmetrics).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("COMFYUI_PATH", str(ROOT / ".host" / "ComfyUI"))
import conftest  # noqa: E402,F401  (ComfyUI on sys.path, CPU, pack importable as precise_edit)

import torch  # noqa: E402

from precise_edit.kernels.kv_disk import Layout, RecordWriter  # noqa: E402
from precise_edit.kernels.kv_store import encode, entry_nbytes  # noqa: E402

GiB = 2**30
DEV_SHAPE = (1, 24, 3072, 128)  # 1024^2: 4096 image tokens, 25% masked -> 3072 background
DEV_BLOCKS = [("double", i) for i in range(19)] + [("single", i) for i in range(38)]
AUTHORS = 2 * 57 * 3072 * 2 * 4096 * 28


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- 1. sizes -------------------------------------------------------------------------------------

def sizes():
    print("\n## Record size, FLUX-dev 1024x1024, 28 steps, 25% mask (authors: every image token, bf16 = "
          f"{AUTHORS / GiB:.1f} GiB)\n")
    print("| storage | record | x authors |")
    print("|---|---:|---:|")
    for st in ("bf16", "fp8", "int4", "int2"):
        n = entry_nbytes(st, DEV_SHAPE) * 57 * 28
        print(f"| {st} | {n / GiB:.2f} GiB | {n / AUTHORS:.3f}x |")


# -- 2. synthetic streaming -------------------------------------------------------------------------

def phase_write(path: str, storage: str, steps: int) -> dict:
    keys = [(s, b) for s in range(steps) for b in DEV_BLOCKS]
    layout = Layout.build([], storage, DEV_SHAPE, keys)
    gen = torch.Generator().manual_seed(0)
    samples = []
    for i in range(2):  # two distinct entries, cycled (keeps the source data out of the peak)
        k = torch.randn(DEV_SHAPE, generator=gen).to(torch.bfloat16)
        v = torch.randn(DEV_SHAPE, generator=gen).to(torch.bfloat16)
        samples.append(encode(k, v, storage))
        del k, v
    base = peak_rss()
    t0 = time.perf_counter()
    w = RecordWriter(path, layout, {"format": "bench", "version": "2", "header": "{}"})
    for i, (s, b) in enumerate(sorted(keys, key=lambda x: -x[0])):  # the inversion's order: last step first
        w.put_parts((s, b), samples[i % 2])
    w.finish()
    dt = time.perf_counter() - t0
    return {"bytes": layout.data_bytes, "seconds": dt, "peak_rss": peak_rss(), "rss_before": base}


def phase_read(path: str, storage: str, steps: int, depth: int, warm: bool = False) -> dict:
    from precise_edit.kernels.kv_disk_read import DiskKVStore, RecordFile, entry_ranges

    fd = os.open(path, os.O_RDONLY)
    if warm:  # the file in the page cache: what the reader itself costs
        buf = bytearray(64 * 2**20)
        off = 0
        while (got := os.preadv(fd, [memoryview(buf)], off)) > 0:
            off += got
    else:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold cache: read from the disk
    os.close(fd)
    rf = RecordFile(path)
    keys = [(s, b) for s in range(steps) for b in DEV_BLOCKS]
    store = DiskKVStore(rf, storage, DEV_SHAPE, entry_ranges(rf, storage, DEV_SHAPE, keys), depth=depth)
    base = peak_rss()
    per_step = []
    t0 = time.perf_counter()
    for s in range(steps):
        ts = time.perf_counter()
        for b in DEV_BLOCKS:
            store.host_parts((s, b))  # what the edit's get() waits for (dequantisation happens on the GPU)
        per_step.append(time.perf_counter() - ts)
    dt = time.perf_counter() - t0
    store.stop()
    return {"bytes": store.bytes_read, "seconds": dt, "per_step": per_step, "peak_rss": peak_rss(),
            "rss_before": base}


def phase_raw(path: str) -> dict:
    """The device's own sequential read speed on the same file (cold cache, 64 MiB preads)."""
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    buf = bytearray(64 * 2**20)
    mv = memoryview(buf)
    n = 0
    t0 = time.perf_counter()
    while True:
        got = os.preadv(fd, [mv], n)
        if got <= 0:
            break
        n += got
    dt = time.perf_counter() - t0
    os.close(fd)
    return {"bytes": n, "seconds": dt}


def synthetic(folder: str, budget_gb: float, depth: int):
    print(f"\n## Synthetic FLUX-dev record streamed to and from disk ({folder}; each phase a fresh process; "
          f"{depth} blocks in flight)\n")
    print("| storage | steps | file | write GB/s | write peak RSS | stream read GB/s (cold) | raw device read GB/s "
          "(cold) | stream read GB/s (page cache) | read peak RSS | disk time per 1024^2 step (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for storage in ("bf16", "int4"):
        step_bytes = entry_nbytes(storage, DEV_SHAPE) * 57
        steps = max(1, min(28, int(budget_gb * GiB // step_bytes)))
        path = os.path.join(folder, f"synthetic_{storage}.bgkv.safetensors")
        os.makedirs(folder, exist_ok=True)
        try:
            w = _child(["--phase", "write", "--path", path, "--storage", storage, "--steps", str(steps)])
            r = _child(["--phase", "read", "--path", path, "--storage", storage, "--steps", str(steps),
                        "--depth", str(depth)])
            raw = _child(["--phase", "raw", "--path", path])
            warm = _child(["--phase", "read", "--path", path, "--storage", storage, "--steps", str(steps),
                           "--depth", str(depth), "--warm"])
        finally:
            for p in (path, path + ".partial"):
                if os.path.exists(p):
                    os.unlink(p)
        per = statistics.median(r["per_step"])
        rows.append((storage, steps, w, r, raw, warm, per))
        print(f"| {storage} | {steps} | {w['bytes'] / GiB:.2f} GiB | {w['bytes'] / w['seconds'] / 1e9:.3f} | "
              f"{w['peak_rss'] / GiB:.2f} GiB | {r['bytes'] / r['seconds'] / 1e9:.3f} | "
              f"{raw['bytes'] / raw['seconds'] / 1e9:.3f} | {warm['bytes'] / warm['seconds'] / 1e9:.2f} | "
              f"{r['peak_rss'] / GiB:.2f} GiB | {per:.2f} s |")
    print("\nDisk time per step at another read speed scales linearly (bytes per step / speed):")
    for storage, steps, w, r, raw, warm, per in rows:
        step_gb = entry_nbytes(storage, DEV_SHAPE) * 57 / 1e9
        print(f"- {storage}: {step_gb:.2f} GB per step -> {step_gb / 3.0:.2f} s at 3 GB/s (NVMe), "
              f"{step_gb / 0.5:.2f} s at 0.5 GB/s (SATA SSD)")
    print("\nAn edit waits for the disk only where a step's read takes longer than its compute "
          "(the reader thread runs ahead while the GPU computes): wait per step = max(0, disk time - compute time).")


def _child(args) -> dict:
    res = subprocess.run([sys.executable, __file__] + args, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- 3. real model ------------------------------------------------------------------------------

def real(folder: str, runs: int, hidden: int, depth: int, single: int, side: int, steps: int):
    import tiny_models as tm
    from precise_edit.nodes.kv_edit.nodes import KVEditSampler, KVInvert

    print(f"\n## Real edit: FLUX architecture, hidden {hidden} ({hidden // 128} heads of 128), {depth} double + "
          f"{single} single blocks, {side}x{side} image, {steps} steps, bf16 record, CPU fp32\n")
    model = tm.tiny_flux(0, hidden=hidden, heads=hidden // 128, depth=depth, single=single)
    gen = torch.Generator().manual_seed(1)
    latent = {"samples": torch.randn(1, 16, side // 8, side // 8, generator=gen)}
    mask = torch.zeros(1, side, side)
    mask[0, side // 4: side * 3 // 4, side // 4: side * 3 // 4] = 1  # 25% of the image
    src = tm.stub_conditioning("flux", "a photo of a cat on a sofa", guidance=1.5)
    tgt = tm.stub_conditioning("flux", "a photo of a dog on a sofa", guidance=5.5)
    recs = {}
    for place in ("cpu", "disk"):
        out = KVInvert.execute(model, latent, mask, src, steps, False, "bf16", place, 0, "touched", 0.0, folder)
        recs[place] = out.args[0]
    times = {"cpu": [], "disk": []}
    outs = {}
    for _ in range(runs):
        for place in ("cpu", "disk"):
            t0 = time.perf_counter()
            outs[place] = KVEditSampler.execute(model, recs[place], tgt, seed=0, skip_steps=1, reinit=False,
                                                attn_scale=1.0, mode="paper").args[0]["samples"]
            times[place].append(time.perf_counter() - t0)
    mc, md = statistics.median(times["cpu"]), statistics.median(times["disk"])
    print(f"record {recs['cpu'].store.nbytes() / 2**20:.1f} MiB; disk edit bit-identical to memory edit: "
          f"{torch.equal(outs['cpu'], outs['disk'])}")
    print(f"edit time (median of {runs}, interleaved): memory {mc:.2f} s, disk {md:.2f} s, ratio {md / mc:.3f}x; "
          f"disk wait in the last edit {recs['disk'].store.wait_s:.3f} s")
    os.unlink(recs["disk"].store.path)


def rss_steps(folder: str, hidden: int, depth: int, single: int, side: int, steps_list):
    print(f"\n## Peak RSS of a fresh process (inversion + edit), FLUX architecture hidden {hidden}, {side}x{side}, "
          f"fp32 record (tests/comfy_test_helpers/kv_rss_probe.py)\n")
    print("| place | steps | record | peak after inversion | peak after edit |")
    print("|---|---:|---:|---:|---:|")
    probe = ROOT / "tests" / "comfy_test_helpers" / "kv_rss_probe.py"
    for place, steps in [("disk", s) for s in steps_list] + [("cpu", steps_list[-1])]:
        res = subprocess.run([sys.executable, str(probe), place, str(steps), "--hidden", str(hidden), "--heads",
                              str(hidden // 128), "--depth", str(depth), "--single", str(single), "--side",
                              str(side), "--folder", folder, "--storage", "fp32"], capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(res.stderr[-3000:])
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"| {r['place']} | {steps} | {r['record_bytes'] / 2**20:.0f} MiB | "
              f"{r['peak_after_inversion'] / 2**20:.0f} MiB | {r['peak'] / 2**20:.0f} MiB |")
        shutil.rmtree(folder, ignore_errors=True)


# -- 4. quantization error ---------------------------------------------------------------------------

def quant_error(steps: int = 8, skip: int = 2):
    import tiny_models as tm
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from precise_edit.nodes.kv_edit.nodes import KVEditSampler, KVInvert

    print(f"\n## Quantization error on the tiny test model (hidden 128, 128x128 image, {steps} steps, skip {skip}); "
          f"against the bf16 record\n")
    model = tm.tiny_flux(0)
    vae = tm.tiny_taesd_vae(16)
    side = 128
    gen = torch.Generator().manual_seed(1)
    latent = {"samples": torch.randn(1, 16, side // 8, side // 8, generator=gen)}
    mask = torch.zeros(1, side, side)
    mask[0, 32:96, 32:96] = 1
    src = tm.stub_conditioning("flux", "a photo of a cat on a sofa", guidance=1.5)
    tgt = tm.stub_conditioning("flux", "a photo of a dog on a sofa", guidance=5.5)
    outs = {}
    for st in ("bf16", "fp8", "int4", "int2"):
        rec = KVInvert.execute(model, latent, mask, src, steps, False, st, "cpu", 0, "touched", 0.0, "").args[0]
        outs[st] = KVEditSampler.execute(model, rec, tgt, seed=0, skip_steps=skip, reinit=False, attn_scale=1.0,
                                         mode="paper").args[0]["samples"]
    fg = rec.latent_mask[:, None].expand_as(outs["bf16"])
    ref_img = vae.decode(outs["bf16"]).float()
    pix = mask[0].bool()
    scale = outs["bf16"][fg].abs().mean().item()
    print(f"(mean |latent| on the foreground: {scale:.3f})\n")
    print("| storage | max abs delta (fg latent) | mean abs delta | PSNR decoded fg (dB) |")
    print("|---|---:|---:|---:|")
    for st in ("fp8", "int4", "int2"):
        d = (outs[st] - outs["bf16"])[fg].abs()
        img = vae.decode(outs[st]).float()
        psnr = peak_signal_noise_ratio(img[0][pix], ref_img[0][pix], data_range=1.0).item()
        print(f"| {st} | {d.max().item():.4f} | {d.mean().item():.5f} | {psnr:.1f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", default="")
    ap.add_argument("--path", default="")
    ap.add_argument("--storage", default="bf16")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--folder", default="/tmp/kv_bench")
    ap.add_argument("--budget-gb", type=float, default=4.5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warm", action="store_true")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--model-depth", type=int, default=2)
    ap.add_argument("--model-single", type=int, default=4)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--real-steps", type=int, default=8)
    ap.add_argument("--rss-steps", default="4,16")
    ap.add_argument("--only", default="sizes,synthetic,real,rss,quant")
    a = ap.parse_args()
    if a.phase == "write":
        print(json.dumps(phase_write(a.path, a.storage, a.steps)))
        return
    if a.phase == "read":
        print(json.dumps(phase_read(a.path, a.storage, a.steps, a.depth, a.warm)))
        return
    if a.phase == "raw":
        print(json.dumps(phase_raw(a.path)))
        return
    torch.set_num_threads(max(1, os.cpu_count()))
    print(f"# bench_kv_disk on {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}; a machine shared with other jobs (timings are noisy)")
    only = a.only.split(",")
    if "sizes" in only:
        sizes()
    if "synthetic" in only:
        synthetic(a.folder, a.budget_gb, a.depth)
    if "real" in only:
        real(os.path.join(a.folder, "real"), a.runs, a.hidden, a.model_depth, a.model_single, a.side, a.real_steps)
    if "rss" in only:
        rss_steps(os.path.join(a.folder, "rss"), a.hidden, a.model_depth, a.model_single, a.side,
                  [int(x) for x in a.rss_steps.split(",")])
    if "quant" in only:
        quant_error()


if __name__ == "__main__":
    main()

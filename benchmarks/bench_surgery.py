"""Per-step overhead of ExemplarLatentSurgery against a plain KSampler on the same model.

A script, not a test: ``.venv/bin/python benchmarks/bench_surgery.py [--steps 10 --repeats 3]``.
It builds a small SD1.5-class UNet with random weights (no downloads), samples the same
latent with ComfyUI's KSampler path (a) plain, (b) with ComfyUI's own noise mask
(SetLatentNoiseMask, for reference) and (c) through ExemplarLatentSurgery (change map with
keep / partial / full regions and an exemplar), and prints per-step times and ratios.
Runs in well under 3 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMFYUI = Path(os.environ.get("COMFYUI_PATH", ROOT / ".host" / "ComfyUI")).resolve()


def _setup():
    sys.path.insert(0, str(ROOT / "tests"))
    os.environ.setdefault("COMFYUI_PATH", str(COMFYUI))
    import conftest  # noqa: F401  (puts ComfyUI on sys.path, imports the pack as ``precise_edit``)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", type=int, default=24, help="latent side (image side / 8)")
    ap.add_argument("--channels", type=int, default=64, help="UNet model_channels")
    args = ap.parse_args()
    _setup()

    import comfy.sample
    import torch

    import tiny_models as tm
    from precise_edit.nodes.pixels.patch import surgery

    torch.manual_seed(0)
    model = tm.tiny_sd15(seed=0, channels=args.channels)
    cond = tm.stub_conditioning("sd15", "a photo")
    n = args.size
    S = torch.randn(1, 4, n, n)
    C = torch.zeros(1, n * 8, n * 8)
    C[:, n * 2:n * 6, n * 2:n * 6] = 1.0          # full change (exemplar) in the middle
    C[:, :, : n * 2] = 0.5                       # partial change on the left
    region = (C == 1).float()
    exemplar = {"samples": torch.randn(1, 4, n // 2, n // 3)}
    patched, latent, _ = surgery(model, {"samples": S}, C, [(exemplar, region, "fill")])
    noise = torch.randn_like(S)
    mask_only = latent["noise_mask"]

    def run(m, lat, mask):
        t = time.perf_counter()
        comfy.sample.sample(m, noise, args.steps, 7.0, "euler", "normal", cond, cond, lat, denoise=1.0,
                            noise_mask=mask, seed=0, disable_pbar=True)
        return (time.perf_counter() - t) / args.steps

    cases = [("plain KSampler", model, S, None),
             ("KSampler + noise mask (ComfyUI inpaint)", model, S, mask_only),
             ("ExemplarLatentSurgery", patched, latent["samples"], latent["noise_mask"])]
    for _, m, lat, mask in cases:  # warm-up
        run(m, lat, mask)
    times = {name: [] for name, *_ in cases}
    for r in range(args.repeats):  # interleaved, order rotated, so drifts hit every case alike
        for name, m, lat, mask in cases[r % 3:] + cases[:r % 3]:
            times[name].append(run(m, lat, mask))

    base = min(times["plain KSampler"])
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"model: SD1.5-class UNet, model_channels={args.channels}, latent {n}x{n} "
          f"({n * 8}x{n * 8} px), euler, {args.steps} steps, cfg 7 (2 model rows per step), "
          f"best of {args.repeats} interleaved runs "
          f"(the minimum is robust to other load on the machine)")
    print()
    print(f"| {'sampler':40} | {'ms / step':>9} | {'vs plain':>8} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 10}|")
    for name, *_ in cases:
        t = min(times[name])
        print(f"| {name:40} | {1000 * t:9.1f} | {t / base:8.3f} |")
    overhead = min(times["ExemplarLatentSurgery"]) / base - 1
    # The surgery's own work, timed alone (end-to-end differences above are within noise):
    # the per-step schedule (one denoise-mask function call) and the once-per-run paste.
    import comfy.utils
    from precise_edit.kernels import surgery as K

    prepared = comfy.utils.reshape_mask(latent["noise_mask"], S.shape)
    sigmas = torch.linspace(14.6, 0.0, args.steps + 1)
    reps = 200
    t = time.perf_counter()
    for i in range(reps):
        K.free_mask(prepared, float(sigmas[i % args.steps]), sigmas)
    schedule = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for _ in range(reps):
        torch.where(prepared == 0, S, noise)
    paste = (time.perf_counter() - t) / reps
    own = schedule + paste / args.steps
    print()
    print(f"end-to-end surgery vs plain: {100 * overhead:+.1f}% per step (target <= 5%)")
    print(f"surgery's own work: schedule {1000 * schedule:.3f} ms/step + final paste {1000 * paste:.3f} ms/run "
          f"= {100 * own / base:.3f}% of a plain step")


if __name__ == "__main__":
    main()

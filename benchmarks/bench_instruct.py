"""InstructGuider benchmark: time per sampling step against ComfyUI's DualCFGGuider with the same
number of model evaluations (three conditions: image + instruction, image only, neither).

Prints a table; not a test. An SD1.5-class InstructPix2Pix UNet (8 input channels, ComfyUI's own
classes, random weights), Euler through SamplerCustomAdvanced's path (``guider.sample``), runs of
the two guiders interleaved, medians of ``--repeats`` runs. Rows: constant scales (the DualCFG
equivalent), linear schedules on both scales, and the instruction-strength mode. Dynamic negative
guidance adds a fourth condition (one more model evaluation per step), so its row is informative
only (it is not the same work). Run from the repository root:

    .venv/bin/python benchmarks/bench_instruct.py [--channels 128] [--side 48] [--steps 10] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.samplers  # noqa: E402
import tiny_models as tm  # noqa: E402
from comfy_extras.nodes_custom_sampler import Guider_DualCFG  # noqa: E402
from precise_edit.nodes.instruct.nodes import instruct_guider  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=128, help="UNet model_channels")
    p.add_argument("--side", type=int, default=48, help="latent side")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = tm.tiny_sd15_ip2p(0, channels=args.channels)
    dev = mm.get_torch_device()
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 4, args.side, args.side, generator=gen)
    fam = "sd15"
    pos = tm.stub_conditioning(fam, "add a small tree in the bottom right corner", concat_latent_image=image)
    mid = tm.stub_conditioning(fam, "", concat_latent_image=image)
    neg = tm.stub_conditioning(fam, "")
    neg_instr = tm.stub_conditioning(fam, "blurry", concat_latent_image=image)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", args.steps)
    sampler = comfy.samplers.sampler_object("euler")
    noise = torch.randn(1, 4, args.side, args.side, generator=gen)
    latent = torch.zeros_like(noise)

    def dual():
        g = Guider_DualCFG(model)
        g.set_conds(pos, mid, neg)
        g.set_cfg(7.5, 1.5)
        return g

    def instruct(**kw):
        return instruct_guider(model, pos, neg, mid, kw.pop("negative_instruction", None), text_scale=7.5,
                               image_scale=1.5, **kw)[0]

    variants = {
        "DualCFGGuider (reference)": dual,
        "InstructGuider, constant": lambda: instruct(),
        "InstructGuider, linear schedules": lambda: instruct(text_schedule="linear", text_scale_end=4.0,
                                                              image_schedule="linear", image_scale_end=1.0),
        "InstructGuider, from instruction": lambda: instruct(text_scale_mode="from instruction",
                                                              instruction="add a small tree in the corner"),
        "InstructGuider + DNG (4 conditions)": lambda: instruct(negative_instruction=neg_instr, negative_scale=1.0),
    }

    def once(make):
        g = make()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            g.sample(noise, latent, sampler, sigmas, disable_pbar=True, seed=0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / args.steps

    for make in variants.values():  # warm-up (model load, kernels)
        once(make)
    times = {k: [] for k in variants}
    for _ in range(args.repeats):  # interleaved
        for k, make in variants.items():
            times[k].append(once(make))
    ref = statistics.median(times["DualCFGGuider (reference)"])
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {dev}, "
          f"torch {torch.__version__}; UNet channels {args.channels}, latent {args.side}x{args.side}, "
          f"{args.steps} Euler steps, median of {args.repeats} interleaved runs")
    print(f"{'guider':40s} {'ms/step':>10s} {'vs DualCFG':>11s}")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:40s} {1000 * m:10.2f} {100 * (m / ref - 1):+10.2f}%")
    # The guider's own work per step beyond DualCFG's (step lookup in the sampler's sigmas, the
    # scales of that step, bookkeeping), timed alone: robust to other load on the machine.
    g = variants["InstructGuider, linear schedules"]()
    opts = {"transformer_options": {"sample_sigmas": sigmas}}
    g.scales_at(sigmas[0], opts)
    n = 2000
    t = time.perf_counter()
    for k in range(n):
        g.scales_at(sigmas[k % args.steps], opts)
    own = (time.perf_counter() - t) / n
    print(f"InstructGuider's own work: {1e6 * own:.1f} us/step = {100 * own / ref:.3f}% of a DualCFG step "
          f"(target <= 2%)")


if __name__ == "__main__":
    main()

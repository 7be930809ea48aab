"""Measuring edits: three tables.

A script, not a test: ``.venv/bin/python benchmarks/bench_eval.py [--repeats 3] [--only metrics,overhead,ray]``.

1. EditMetrics cost per 512x512 image and metric on CPU, with networks of the real sizes and random
   weights (no downloads): LPIPS SqueezeNet, DINO ViT-B/8 (PIE-Bench's), CLIP ViT-L/14 vision.
2. Runner overhead: the same workflow and cases run (a) directly through the HTTP API (upload,
   queue, wait, fetch the image) and (b) by the runner (``--no-metrics``, so both do the same work),
   interleaved, on one server started with ``--cache-none`` (nothing is reused between runs) and
   ``OMP_NUM_THREADS=1``; also the runner's time outside its cases (wall - sum of per-case seconds).
3. Ray scale-out: the runner in ``--ray`` mode over one server vs two (each ``OMP_NUM_THREADS=1``),
   same cases, interleaved; throughput = cases / wall time, and cases / processing time (first case
   start to last case end, from the runner's records), which leaves out the run's fixed start-up.

Workflows: the tiny-model KV-Edit example (``example_workflows/KV-Edit - edit a masked region (FLUX.1-dev).json`` with the test fixtures'
loaders, 8 steps) on the shipped mini data set scaled to 64 px. Medians of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMFYUI = Path(os.environ.get("COMFYUI_PATH", ROOT / ".host" / "ComfyUI")).resolve()


def _setup():
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "scripts"))
    os.environ.setdefault("COMFYUI_PATH", str(COMFYUI))
    import conftest  # noqa: F401  (puts ComfyUI on sys.path, imports the pack as ``precise_edit``)


KV_SAMPLER = "15"  # KVEditSampler's id in that workflow


def med(xs):
    return statistics.median(xs)


# --- 1. metric cost -------------------------------------------------------------------------------

def bench_metrics(repeats: int) -> None:
    import torch
    import torchvision

    import comfy.clip_vision
    from precise_edit.kernels import metrics as km
    from precise_edit.kernels.dino_vit import DinoViT
    from precise_edit.nodes.evaluation import models

    torch.set_num_threads(max(1, torch.get_num_threads()))
    g = torch.Generator().manual_seed(0)
    src, edit = torch.rand(512, 512, 3, generator=g), torch.rand(512, 512, 3, generator=g)
    mask = torch.zeros(512, 512)
    mask[128:384, 128:384] = 1
    import lpips

    lp = lpips.LPIPS(net="squeeze", pnet_rand=True, verbose=False).eval()
    models.load_lpips_backbone(lp, torchvision.models.squeezenet1_1().state_dict())
    dim, depth = 768, 12  # ViT-B/8
    sd = {"cls_token": torch.randn(1, 1, dim), "pos_embed": 0.02 * torch.randn(1, 785, dim),
          "patch_embed.proj.weight": 0.02 * torch.randn(dim, 3, 8, 8), "patch_embed.proj.bias": torch.zeros(dim)}
    for i in range(depth):
        p = f"blocks.{i}."
        for name, shape in (("norm1", (dim,)), ("norm2", (dim,))):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = torch.ones(shape), torch.zeros(shape)
        for name, (o, i_) in (("attn.qkv", (3 * dim, dim)), ("attn.proj", (dim, dim)), ("mlp.fc1", (4 * dim, dim)),
                              ("mlp.fc2", (dim, 4 * dim))):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = 0.02 * torch.randn(o, i_), torch.zeros(o)
    dino = DinoViT(sd)
    cv = comfy.clip_vision.ClipVisionModel(str(Path(comfy.clip_vision.__file__).parent / "clip_vision_config_vitl.json"))
    with torch.no_grad():
        for p in cv.model.parameters():
            p.copy_(0.02 * torch.randn_like(p))

    s8, e8 = km.to_uint8(src).float() / 255, km.to_uint8(edit).float() / 255
    a, b = km.region(e8, 1 - mask), km.region(s8, 1 - mask)
    cases = {
        "PSNR (one part)": lambda: km.psnr(a, b),
        "MSE (one part)": lambda: km.mse(a, b),
        "SSIM (one part)": lambda: km.ssim(a, b),
        "LPIPS SqueezeNet (one part)": lambda: models.lpips_distance(lp, a, b),
        "structure distance (DINO ViT-B/8, source + edit)": lambda: km.structure_distance(
            *dino.keys(km.dino_preprocess(torch.stack([e8, s8]).permute(0, 3, 1, 2) * 255))),
        "CLIP ViT-L/14 image embedding (one image)": lambda: models.clip_image_embeds(cv, e8),
    }
    for fn in cases.values():  # warm-up
        fn()
    times = {k: [] for k in cases}
    for _ in range(repeats):  # interleaved
        for k, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    print(f"\n### EditMetrics cost per 512x512 image, CPU ({torch.get_num_threads()} torch threads), "
          f"median of {repeats}\n")
    print("| metric | ms |\n|---|---:|")
    for k, v in times.items():
        print(f"| {k} | {1000 * med(v):.1f} |")
    full = 2 * sum(med(times[k]) for k in list(cases)[:4]) + med(times[list(cases)[4]]) + 3 * med(times[list(cases)[5]])
    print(f"| whole PIE-Bench set (2 parts x 4 pixel metrics, structure, 3 CLIP images; text excluded) | "
          f"{1000 * full:.0f} |")


# --- servers and workflows for 2. and 3. ----------------------------------------------------------

def _server(tmp: Path, name: str, threads: int | None):
    from conftest import HELPERS_DIR, PACK_DIR
    from harness.comfy_server import ComfyServer

    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
    return ComfyServer(COMFYUI, PACK_DIR, HELPERS_DIR, tmp / name, extra_args=("--cache-none",), env=env)


def _start_all(servers):
    import threading

    ts = [threading.Thread(target=s.start) for s in servers]
    [t.start() for t in ts]
    [t.join() for t in ts]


def _kv_workflow(tmp: Path, object_info: dict, steps: int) -> Path:
    from harness.fixtures_swap import shrink_resolution, swap_loaders
    from harness.workflow_api import ui_to_api

    kv = ui_to_api(json.loads((ROOT / "example_workflows" / "KV-Edit - edit a masked region (FLUX.1-dev).json").read_text()), object_info)
    swap_loaders(kv)
    shrink_resolution(kv)
    for node in kv.values():
        if "steps" in node["inputs"] and not isinstance(node["inputs"]["steps"], list):
            node["inputs"]["steps"] = steps
    for node in kv.values():
        if node["class_type"] == "BackgroundKVCache":
            node["inputs"]["save"] = False
    path = tmp / "kv_edit_tiny.json"
    path.write_text(json.dumps(kv))
    return path


PLAIN = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
         "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1.0}},
         "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}}}


def _workflow(kind, tmp, object_info, steps) -> Path:
    if kind == "kv":
        return _kv_workflow(tmp, object_info, steps)
    path = tmp / "plain.json"
    path.write_text(json.dumps(PLAIN))
    return path


def _bindings(kind) -> dict:
    if kind != "kv":
        return {}
    return {"source_prompt": "Source prompt (describes the photo)", "target_prompt": "Target prompt (the edit)",
            "seed": f"{KV_SAMPLER}.seed"}


def _runner_args(data, out, servers, wf, seed, *extra, kind="kv"):
    a = ["--data", str(data), "--out", str(out), "--workflow", str(wf), "--no-progress", "--no-metrics"]
    for role, node in _bindings(kind).items():
        a += ["--bind", f"{role}={node}"]
    if kind == "kv":
        a += ["--seed", str(seed)]
    for s in servers:
        a += ["--server", s.url]
    return a + list(extra)


def _case_seconds(out: Path) -> float:
    """Sum of the per-case seconds (upload, queue, wait) the runner recorded in ``out``."""
    return sum(json.loads(f.read_text())["seconds"] for f in out.glob("cases/*/*/record.json"))


def bench_overhead(repeats: int, steps: int, kind: str) -> None:
    from make_pie_mini import make

    from precise_edit.bench import cli
    from precise_edit.bench.client import ComfyClient
    from precise_edit.bench.dataset import case_inputs, load_cases, rgba_with_mask
    from precise_edit.bench.method import MetricSettings, Method, case_prompt, resolve_bindings

    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    # one thread, as in the Ray table: a multi-threaded OpenMP server on a loaded 2-core machine spins
    # and makes one tiny case take 2 to 20 s, which buries the runner's cost in noise
    srv = _server(tmp, "s0", 1)
    _start_all([srv])
    try:
        data = make(tmp / "pie", 64)
        wf = _workflow(kind, tmp, srv.object_info(), steps)
        cases = load_cases(data / "mapping_file.json")
        prompt = json.loads(wf.read_text())
        binds = resolve_bindings("kv", prompt, _bindings(kind), kind == "kv")
        no_metrics = MetricSettings(enabled=False)

        def direct(seed):
            client = ComfyClient(srv.url)
            t = time.perf_counter()
            m = Method("kv", prompt, binds, seed)
            for c in cases:
                png, mask, _ = case_inputs(c, data / "annotation_images")
                name = client.upload(f"direct_{c.case_id}.png", rgba_with_mask(png, mask))
                out = client.run(case_prompt(m, c.__dict__, name, None, no_metrics))
                client.image(out[binds["output"][0]]["images"][0])
            return time.perf_counter() - t

        fixed = []

        def runner(seed):
            t = time.perf_counter()
            assert cli.main(_runner_args(data, tmp / f"run_{seed}", [srv], wf, seed, kind=kind)) == 0
            wall = time.perf_counter() - t
            fixed.append(wall - _case_seconds(tmp / f"run_{seed}"))
            return wall

        direct(999)  # warm-up (imports, first model build)
        runner(998)
        d, r = [], []
        for i in range(repeats):
            d.append(direct(1000 + 2 * i))
            r.append(runner(1001 + 2 * i))
        n = len(cases)
        what = f"tiny KV-Edit {steps} steps" if kind == "kv" else "LoadImage > ImageBlur > SaveImage"
        print(f"\n### Runner overhead vs the same workflow through the API directly ({n} cases, {what}, 64 px, "
              f"--cache-none), median of {repeats}\n")
        print("| path | s per run | s per case |\n|---|---:|---:|")
        print(f"| direct API (upload, queue, wait, fetch) | {med(d):.2f} | {med(d) / n:.3f} |")
        print(f"| runner (--no-metrics) | {med(r):.2f} | {med(r) / n:.3f} |")
        print(f"| overhead | {100 * (med(r) / med(d) - 1):+.1f} % | |")
        print(f"| runner outside its cases (wall - sum of per-case seconds: object_info, workflow, records, "
              f"tables) | {med(fixed[1:]):.2f} | |")
        print(f"\nload average (1 min) at the end of this table: {os.getloadavg()[0]:.1f}")
    finally:
        srv.stop()


def _processing_window(out: Path) -> float:
    """Seconds from the first case's start to the last case's end, as the runner recorded them
    (the run without its fixed start-up: Ray, actors, object_info, and its closing tables)."""
    recs = [json.loads(f.read_text()) for f in out.glob("cases/*/*/record.json")]
    return max(r["finished_at"] for r in recs) - min(r["finished_at"] - r["seconds"] for r in recs)


def bench_ray(repeats: int, steps: int, kind: str, copies: int = 4, size: int = 64) -> None:
    import ray

    from make_pie_mini import CASES, make

    from precise_edit.bench import cli

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    servers = [_server(tmp, f"s{i}", 1) for i in range(2)]
    _start_all(servers)
    try:
        cases = [(f"{k}{c[0][1:]}",) + tuple(c[1:]) for k in range(copies) for c in CASES]
        data = make(tmp / "pie", size, cases)
        wf = _workflow(kind, tmp, servers[0].object_info(), steps)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

        work = {1: [], 2: []}
        window = {1: [], 2: []}

        def go(srvs, seed):
            t = time.perf_counter()
            out = tmp / f"ray_{len(srvs)}_{seed}"
            assert cli.main(_runner_args(data, out, srvs, wf, seed, "--ray", kind=kind)) == 0
            wall = time.perf_counter() - t
            work[len(srvs)].append(_case_seconds(out))
            window[len(srvs)].append(_processing_window(out))
            return wall

        go(servers, 1)  # warm-up both servers
        work[2].clear()
        window[2].clear()
        one, two = [], []
        for i in range(repeats):
            one.append(go(servers[:1], 10 + i))
            two.append(go(servers, 100 + i))
        n = len(cases)
        what = f"tiny KV-Edit {steps} steps" if kind == "kv" else "LoadImage > ImageBlur > SaveImage"
        print(f"\n### Ray: two ComfyUI servers vs one ({n} cases, {what}, {size} px, "
              f"OMP_NUM_THREADS=1 per server), median of {repeats}\n")
        print("| servers | wall s | cases / s (wall) | processing s (first case start to last case end) "
              "| cases / s (processing) |\n|---|---:|---:|---:|---:|")
        for k, walls in ((1, one), (2, two)):
            print(f"| {k} | {med(walls):.2f} | {n / med(walls):.2f} | {med(window[k]):.2f} | {n / med(window[k]):.2f} |")
        print(f"| speed-up | {med(one) / med(two):.2f}x | | {med(window[1]) / med(window[2]):.2f}x | |")
        print(f"\nfixed cost per run (wall - processing, median): one server {med(one) - med(window[1]):.2f} s, "
              f"two servers {med(two) - med(window[2]):.2f} s (Ray actors, object_info, tables); sum of per-case "
              f"seconds, median: one server {med(work[1]):.2f} s, two servers {med(work[2]):.2f} s; "
              f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")
    finally:
        ray.shutdown()
        for s in servers:
            s.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", default="metrics,overhead,ray")
    ap.add_argument("--ray-copies", type=int, default=4, help="the mini set's 6 cases this many times (Ray table)")
    ap.add_argument("--ray-size", type=int, default=64, help="image side of the Ray table's cases")
    ap.add_argument("--workflow", default="kv", choices=["kv", "plain"],
                    help="kv: the tiny KV-Edit example; plain: a blur (HTTP-bound, for a loaded machine)")
    args = ap.parse_args()
    _setup()
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start (shared machine: numbers are noisy)")
    only = set(args.only.split(","))
    if "metrics" in only:
        bench_metrics(args.repeats)
    if "overhead" in only:
        bench_overhead(args.repeats, args.steps, args.workflow)
    if "ray" in only:
        bench_ray(args.repeats, args.steps, args.workflow, args.ray_copies, args.ray_size)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

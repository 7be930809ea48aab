"""Run one KV-Edit inversion + edit on a small FLUX-architecture model in a fresh process and
print its peak resident memory (``ru_maxrss``) as JSON: used by tests and benchmarks to show
that a record on disk keeps memory flat as steps grow (measured, not computed).

    python kv_rss_probe.py PLACE STEPS [--hidden H --heads N --side PIXELS --storage S --folder DIR]
"""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
os.environ.setdefault("COMFYUI_PATH", str(TESTS.parent / ".host" / "ComfyUI"))

import conftest  # noqa: E402,F401  (imports ComfyUI and the pack)
import torch  # noqa: E402

import tiny_models as tm  # noqa: E402
from precise_edit.nodes.kv_edit.nodes import KVEditSampler, KVInvert  # noqa: E402


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("place")
    ap.add_argument("steps", type=int)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--single", type=int, default=2)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--storage", default="fp32")
    ap.add_argument("--folder", default="")
    ap.add_argument("--skip", type=int, default=1)
    ap.add_argument("--save", default="")
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() // 2))
    model = tm.tiny_flux(0, hidden=a.hidden, heads=a.heads, depth=a.depth, single=a.single)
    gen = torch.Generator().manual_seed(1)
    latent = {"samples": torch.randn(1, 16, a.side // 8, a.side // 8, generator=gen)}
    mask = torch.zeros(1, a.side, a.side)
    mask[0, a.side // 4: a.side // 2, a.side // 4: a.side // 2] = 1  # a quarter of the width and height
    src = tm.stub_conditioning("flux", "a photo of a cat on a sofa", guidance=1.5)
    tgt = tm.stub_conditioning("flux", "a photo of a dog on a sofa", guidance=5.5)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    out = KVInvert.execute(model, latent, mask, src, a.steps, False, a.storage, a.place, 0, "touched", 0.0,
                           a.folder)
    rec = out.args[0]
    t_inv = time.perf_counter() - t0
    peak_inv = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    edited = KVEditSampler.execute(model, rec, tgt, seed=0, skip_steps=a.skip, reinit=False, attn_scale=1.0,
                                   mode="paper").args[0]["samples"]
    t_edit = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if a.save:
        torch.save(edited, a.save)  # the test's own tensor, read back by the test
    print(json.dumps({"place": rec.place(), "record_bytes": rec.store.nbytes(), "base_rss": base,
                      "peak_after_inversion": peak_inv, "peak": peak, "rss_end": rss_now(),
                      "t_invert": t_inv, "t_edit": t_edit, "reason": out.ui["text"][0].splitlines()[-1],
                      "wait_s": getattr(rec.store, "wait_s", 0.0)}))


if __name__ == "__main__":
    main()

"""FID / KID time for two sets of N images of SIZE^2 on CPU (the issue's figure: 1,000 images of 256^2).

    python benchmarks/bench_set_fid.py --inception models/inception/weights-inception-2015-12-05-6726825d.pth
    python benchmarks/bench_set_fid.py --random-weights   # no weights file: same cost, meaningless values

Prints one table row per run: image loading + InceptionV3 features (both sets), FID + KID statistics,
total; the median over --repeats runs. The timings depend on the CPU and on its load.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from edit_bench import _import_pack  # noqa: E402


def random_weights_file(path):
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    sd = {k: (torch.ones_like(v) if k.endswith("running_var") else torch.randn_like(v) * 0.05
              if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(sd, path)


def write_images(folder, n, size, seed):
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inception", help="torch-fidelity's InceptionV3 weights file")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    _import_pack()
    from precise_edit.bench import set_fid as folders
    from precise_edit.kernels import set_fid

    tmp = Path(tempfile.mkdtemp(prefix="bench_fid_"))
    weights = args.inception
    if not weights:
        weights = str(tmp / set_fid.INCEPTION_FILE)
        random_weights_file(weights)
    write_images(tmp / "a", args.n, args.size, 1)
    write_images(tmp / "b", args.n, args.size, 2)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}; {args.n} + {args.n} images of {args.size}^2")
    print("| run | features s | FID+KID s | total s | images/s |")
    print("|---|---|---|---|---|")
    totals = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        model = set_fid.inception(weights)
        feats = [set_fid.features(model, folders.batches(folders.image_files(tmp / s), args.batch)) for s in "ab"]
        t1 = time.perf_counter()
        set_fid.score(*feats)
        t2 = time.perf_counter()
        totals.append(t2 - t0)
        print(f"| {r + 1} | {t1 - t0:.1f} | {t2 - t1:.1f} | {t2 - t0:.1f} | {2 * args.n / (t1 - t0):.1f} |")
    print(f"median total: {statistics.median(totals):.1f} s (load after: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

"""The synthetic editing benchmark through the evaluation runner (scripts/edit_bench.py), in full.

Writes the synthetic set (``--n`` pairs, the edit kinds in turn) in the PIE-Bench layout, starts a
ComfyUI server on loopback with this pack and the tests pack (which holds the synthetic models),
runs the plain Kontext-style edit and the same with SpotEdit (perceptual judge, no mask, the tau
calibrated for the synthetic VAE: ``evaluate.SPOT_TAU``) in each of SpotFusionSampler's modes through
the runner, and prints the synthetic judge's success per method and edit kind with the runner's
median seconds per case. Prints a table; not a test (the CI test runs 5 cases:
tests/test_synthetic_runner.py).

    COMFYUI_PATH=... .venv/bin/python benchmarks/bench_synthetic_runner.py [--n 40] [--steps 28]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401
from conftest import COMFYUI_PATH, HELPERS_DIR, PACK_DIR  # noqa: E402

import pandas as pd  # noqa: E402

from harness.comfy_server import ComfyServer  # noqa: E402
from precise_edit.bench import cli  # noqa: E402
from precise_edit.synthetic import evaluate as ev, piebench, run_judge, scenes  # noqa: E402


def spot_workflow(steps: int, tau: float, mode: str = "paper") -> dict:
    wf = copy.deepcopy(run_judge.kontext_workflow(steps=steps))
    wf["20"] = {"class_type": "SpotSelector", "inputs": {"judge": "perceptual", "tau": tau, "dilation": 0,
                                                          "mask_mode": "union", "vae": ["2", 2]}}
    wf["21"] = {"class_type": "SpotFusionSampler", "inputs": {"model": ["2", 0], "selector": ["20", 0],
                                                               "warmup_steps": 4, "reset_every": 9, "fusion": "cos2",
                                                               "mode": mode}}
    wf["10"]["inputs"]["model"] = ["21", 0]
    return wf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--tau", type=float, default=ev.SPOT_TAU,
                    help="SpotEdit's judge threshold (the authors' 0.2 is set for the FLUX VAE; README)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mapping = piebench.write(scenes.edits(1001, args.n), tmp / "set", size=scenes.FLUX_SIZE)  # the Kontext-style model's size
        methods = (("kontext", run_judge.kontext_workflow(steps=args.steps)),
                   ("kontext_spotedit", spot_workflow(args.steps, args.tau)),
                   ("kontext_spotedit_authors_code", spot_workflow(args.steps, args.tau, "authors code")))
        for name, wf in methods:
            (tmp / f"{name}.json").write_text(json.dumps(wf))
        server = ComfyServer(COMFYUI_PATH, PACK_DIR, HELPERS_DIR, tmp / "comfy", extra_args=("--cpu",))
        server.start()
        try:
            rc = cli.main(["--data", str(tmp / "set"), "--out", str(tmp / "run"), "--no-progress", "--no-metrics",
                           "--server", server.url, "--seed", "0", *run_judge.RUNNER_BINDS,
                           *[a for name, _ in methods for a in ("--workflow", str(tmp / f"{name}.json"))]])
        finally:
            server.stop()
        rates = {"edit done, others kept": run_judge.judge_run(tmp / "run", mapping),
                 "edit done": run_judge.judge_run(tmp / "run", mapping, others_kept=False)}
        secs = pd.read_csv(tmp / "run" / "results.csv").groupby("method")["seconds"].median()
    print(f"\nmachine: {platform.machine()}, shared and noisy; runner rc {rc}; n={args.n}, {args.steps} steps, "
          f"euler/simple, cfg {ev.CFG:g}, SpotEdit tau {args.tau:g}\n")
    kinds = list(scenes.EDIT_KINDS) + ["all"]
    print("| method | verdict | " + " | ".join(kinds) + " | median s/case |\n|---|---" + "|---" * (len(kinds) + 1) + "|")
    for verdict, by_method in rates.items():
        for method, r in by_method.items():
            print(f"| {method} | {verdict} | " + " | ".join(f"{100 * r.get(k, float('nan')):.0f} %" for k in kinds)
                  + f" | {secs[method]:.2f} |")


if __name__ == "__main__":
    main()

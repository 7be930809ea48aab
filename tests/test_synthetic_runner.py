"""The evaluation runner (scripts/edit_bench.py) runs the synthetic benchmark end to end: the set
written in the PIE-Bench layout, the Kontext-style model's workflow on a live ComfyUI server,
the runner's rows judged by the synthetic judge, and the verdicts equal to the same edits
computed in-process (so the runner really sent each case's image and instruction)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import COMFYUI_PATH, HELPERS_DIR, PACK_DIR
from harness.comfy_server import ComfyServer
from precise_edit.bench import cli
from precise_edit.synthetic import evaluate as ev
from precise_edit.synthetic import judge, models, piebench, run_judge, scenes

STEPS = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ComfyServer(COMFYUI_PATH, PACK_DIR, HELPERS_DIR, tmp_path_factory.mktemp("comfy_synth"),
                    extra_args=("--cpu",))
    s.start()
    yield s
    s.stop()


def test_runner_judges_the_synthetic_set_end_to_end(server, tmp_path):
    pairs = scenes.edits(1001, len(scenes.EDIT_KINDS))         # one of each kind
    mapping = piebench.write(pairs, tmp_path / "set", size=ev.KONTEXT_SIZE)
    wf = tmp_path / "kontext.json"
    wf.write_text(json.dumps(run_judge.kontext_workflow(steps=STEPS)))
    out = tmp_path / "run"
    assert cli.main(["--data", str(tmp_path / "set"), "--out", str(out), "--no-progress", "--no-metrics",
                     "--server", server.url, "--workflow", str(wf), "--seed", "0", *run_judge.RUNNER_BINDS]) == 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == len(pairs) and (df["status"] == "ok").all(), df[["case_id", "status", "error"]]
    rates = run_judge.judge_run(out, mapping)["kontext"]
    assert rates["n"] == len(pairs) and set(rates) == set(scenes.EDIT_KINDS) | {"all", "n"}

    # the same edits in-process (same model, sampler, seed): the runner's images match them
    kontext, vae = models.flux("kontext"), models.vae(models.VAE_OF["kontext"])
    entries = json.loads(mapping.read_text())
    verdicts = []
    for _, row in df.iterrows():
        pair = piebench.pair_from_entry(entries[f"{int(row['case_id']):06d}"])
        ran = np.asarray(Image.open(out / row["edited_image"]).convert("RGB")).astype(np.float64)
        here = ev.edit_kontext(kontext, vae, pair, seed=0, steps=STEPS).astype(np.float64)
        assert np.abs(ran - here).mean() < 1.0, np.abs(ran - here).mean()
        verdicts.append(judge.edit_ok(here.astype(np.uint8), pair) and judge.others_kept(here.astype(np.uint8), pair))
    assert rates["all"] == pytest.approx(np.mean(verdicts))

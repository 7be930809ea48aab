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
    verdicts, done = [], []
    for _, row in df.iterrows():
        pair = piebench.pair_from_entry(entries[f"{int(row['case_id']):06d}"])
        ran = np.asarray(Image.open(out / row["edited_image"]).convert("RGB")).astype(np.float64)
        here = ev.edit_kontext(kontext, vae, pair, seed=0, steps=STEPS).astype(np.float64)
        assert np.abs(ran - here).mean() < 1.0, np.abs(ran - here).mean()
        verdicts.append(judge.edit_ok(here.astype(np.uint8), pair) and judge.others_kept(here.astype(np.uint8), pair))
        done.append(judge.edit_ok(here.astype(np.uint8), pair))
    assert rates["all"] == pytest.approx(np.mean(verdicts))
    # the edit alone (measured 2 of the 5 at 8 steps: a verdict that can differ between runner and in-process)
    assert run_judge.judge_run(out, mapping, others_kept=False)["kontext"]["all"] == pytest.approx(np.mean(done))


def test_judge_run_counts_the_other_objects_only_when_asked(tmp_path):
    """``judge_run``'s two verdicts on hand-made runner output: the target itself passes both; the target
    missing an object the edit did not touch has the edit done but not the rest kept; the source fails
    both (no server: results.csv and the images written here)."""
    import dataclasses

    pairs = [p for p in scenes.edits(1001, 20) if p.result is not None
             and any(o.cell != p.result.cell for o in p.target.objects)][:2]
    mapping = piebench.write(pairs, tmp_path / "set", size=ev.KONTEXT_SIZE)
    ids = sorted(json.loads(mapping.read_text()))
    out = tmp_path / "run"
    out.mkdir()
    rows = []
    for case, p in zip(ids, pairs):
        other = next(o for o in p.target.objects if o.cell != p.result.cell)
        missing = dataclasses.replace(p.target, objects=tuple(o for o in p.target.objects if o is not other))
        for method, scene in (("target", p.target), ("missing", missing), ("source", p.source)):
            name = f"{method}_{case}.png"
            Image.fromarray(scenes.render(scene, ev.KONTEXT_SIZE)[0]).save(out / name)
            rows.append({"case_id": case, "method": method, "status": "ok", "edited_image": name})
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    strict = run_judge.judge_run(out, mapping)
    done = run_judge.judge_run(out, mapping, others_kept=False)
    assert strict["target"]["all"] == 1.0 and done["target"]["all"] == 1.0
    assert strict["missing"]["all"] == 0.0 and done["missing"]["all"] == 1.0
    assert strict["source"]["all"] == 0.0 and done["source"]["all"] == 0.0

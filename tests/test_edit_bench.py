"""The data-set runner against two live ComfyUI servers on loopback: bound inputs, EditMetrics rows,
resuming, per-case failures, bad workflows refused before the run, and Ray mode (a local Ray
cluster) spreading cases over both servers with a retry on another server."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import COMFYUI_PATH, HELPERS_DIR, PACK_DIR
from harness.comfy_server import ComfyServer
from harness.fixtures_swap import shrink_resolution, swap_loaders
from harness.workflow_api import ui_to_api
from precise_edit.bench import cli
from precise_edit.bench.method import BindingError

sys.path.insert(0, str(PACK_DIR / "scripts"))
from make_pie_mini import make  # noqa: E402

PLAIN = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "Source"}},
         "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1.0}},
         "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}}}


def _metric_models(models_dir: Path) -> None:
    """Random LPIPS backbone and DINO ViT where a user keeps the real ones (no downloads)."""
    import torchvision

    sys.path.insert(0, str(Path(__file__).parent))
    from test_eval_metrics import _tiny_dino_checkpoint

    (models_dir / "lpips").mkdir(parents=True, exist_ok=True)
    (models_dir / "dino").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tv = torchvision.models.squeezenet1_1()
    for p in tv.parameters():
        p.data.normal_(0, 0.05)
    torch.save(tv.state_dict(), models_dir / "lpips" / "squeezenet1_1-b8a52dc0.pth")
    torch.save(_tiny_dino_checkpoint(), models_dir / "dino" / "dino_vitbase8_pretrain.pth")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    srvs = []
    for i in range(2):
        base = tmp_path_factory.mktemp(f"comfy_bench_{i}")
        _metric_models(base / "models")
        srvs.append(ComfyServer(COMFYUI_PATH, PACK_DIR, HELPERS_DIR, base))
    errors = []

    def start(s):
        try:
            s.start()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=start, args=(s,)) for s in srvs]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if errors:
        [s.stop() for s in srvs]
        raise errors[0]
    yield srvs
    [s.stop() for s in srvs]


@pytest.fixture(scope="module")
def workflows(tmp_path_factory, servers):
    d = tmp_path_factory.mktemp("wf")
    (d / "plain.json").write_text(json.dumps(PLAIN))
    kv = ui_to_api(json.loads((PACK_DIR / "example_workflows" / "KV-Edit - edit a masked region (FLUX.1-dev).json").read_text()), servers[0].object_info())
    swap_loaders(kv)
    shrink_resolution(kv)
    for node in kv.values():  # keep the test fast: few steps
        if "steps" in node["inputs"] and not isinstance(node["inputs"]["steps"], list):
            node["inputs"]["steps"] = 8
    (d / "kv_edit.json").write_text(json.dumps(kv))
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = make(tmp_path_factory.mktemp("pie") / "pie_mini", size=64)
    mapping = json.loads((d / "mapping_file.json").read_text())
    mapping["bad_mask"] = dict(mapping["000000000001"], mask=[1, 2, 3])
    mapping["no_image"] = dict(mapping["000000000001"], image_path="mini/missing.png")
    (d / "mapping_file.json").write_text(json.dumps(mapping))
    return d


def _args(data, out, servers, *extra):
    a = ["--data", str(data), "--out", str(out), "--no-progress"]
    for s in servers:
        a += ["--server", s.url]
    return a + list(extra)


def test_runner_rows_failures_resume_and_new_run(servers, workflows, data, tmp_path):
    out = tmp_path / "run"
    kv_binds = ["--bind", "kv_edit:source_prompt=Source prompt (describes the photo)",
                "--bind", "kv_edit:target_prompt=Target prompt (the edit)"]
    args = _args(data, out, servers[:1], "--workflow", str(workflows / "plain.json"),
                 "--workflow", str(workflows / "kv_edit.json"), "--limit", "2", *kv_binds)
    # --limit 2 keeps cases 1 and 2 (the two broken cases are the last ones of the file)
    assert cli.main(args) == 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 4 and set(df["method"]) == {"plain", "kv_edit"}
    assert (df["status"] == "ok").all()
    for col in ("psnr_unedit_part", "ssim_edit_part", "lpips_unedit_part", "structure_distance", "seconds"):
        assert df[col].notna().all() and (df[col] != float("nan")).all(), col
    assert (df["mask_convention"] == "pie-bench border").all()
    assert pd.read_parquet(out / "results.parquet").shape == df.shape
    assert (out / "plots" / "quality_vs_time.png").stat().st_size > 0
    assert pd.read_csv(out / "summary_by_type.csv").shape[0] == 4  # 2 methods x 2 editing types
    for _, row in df.iterrows():
        assert (out / row["edited_image"]).is_file()
    # the bound prompts reached the server: each case's editing prompt is a text KV-Edit was sent
    import requests

    from precise_edit.bench.dataset import load_cases

    history = requests.get(servers[0].url + "/history", timeout=30).json()
    sent = {n["inputs"].get("text") for h in history.values() for n in h["prompt"][2].values()
            if n.get("class_type") == "CLIPTextEncode"}
    cases = load_cases(data / "mapping_file.json", limit=2)
    assert cases and all(c.editing_prompt in sent and c.original_prompt in sent for c in cases), sent

    # rerun: everything finished is skipped
    assert cli.main(args) == 0
    assert json.loads((out / "last_run.json").read_text())["ran"] == 0

    # broken cases fail with clear messages, the others run; a changed setting is a new run
    args2 = _args(data, out, servers[:1], "--workflow", str(workflows / "plain.json"), "--mask-convention", "as given")
    assert cli.main(args2) == 0
    last = json.loads((out / "last_run.json").read_text())
    assert last["ran"] == 8 and last["failed"] == 2  # 6 good cases, 2 broken ones
    fails = pd.read_csv(out / "failures.csv").set_index("case_id")
    assert "start/length" in fails.loc["bad_mask", "error"]
    assert "missing.png not found" in fails.loc["no_image", "error"]
    assert len({p.name for p in (out / "cases").iterdir() if p.name.startswith("plain__")}) == 2


def test_bad_workflow_is_refused_before_the_run(servers, workflows, data, tmp_path, capsys):
    no_load = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    (tmp_path / "gen.json").write_text(json.dumps(no_load))
    rc = cli.main(_args(data, tmp_path / "out", servers[:1], "--workflow", str(tmp_path / "gen.json"),
                        "--bind", "target_prompt=Prompt"))
    err = capsys.readouterr().err
    assert rc == 2 and "workflow 'gen'" in err and "LoadImage" in err and "no node titled or numbered 'Prompt'" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(BindingError, match="unknown role"):
        cli.build_methods(cli.parse_args(_args(data, tmp_path, [], "--workflow", str(workflows / "plain.json"),
                                               "--bind", "colour=1")), {})


def test_ray_spreads_cases_over_servers_and_retries_elsewhere(servers, workflows, data, tmp_path):
    import ray

    dead = "http://127.0.0.1:9"  # nothing listens: every case sent there fails and is retried
    out = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        args = _args(data, out, servers, "--server", dead, "--workflow", str(workflows / "plain.json"),
                     "--limit", "6", "--ray")
        assert cli.main(args) == 0
    finally:
        ray.shutdown()
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 6 and (df["status"] == "ok").all()
    assert set(df["server"]) == {s.url for s in servers}  # both servers worked
    assert (df["attempts"] >= 1).all()
    retried = df[df["attempts"] > 1]
    assert len(retried) >= 1 and dead not in set(df["server"])

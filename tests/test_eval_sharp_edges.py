"""Sharp edges of the evaluation tools: stale run folders, case folder names, null masks, unreadable
images and weights, NaN / 0..255 / tiny / empty images, [B, 1, H, W] masks, rating requests out of range."""
from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from precise_edit.bench import judge_cli
from precise_edit.bench import lmm_score as lmm
from precise_edit.bench import runner
from precise_edit.bench import set_fid as folders
from precise_edit.bench.dataset import load_cases
from precise_edit.bench.method import Method, MetricSettings
from precise_edit.kernels import set_fid
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.evaluation import models
from precise_edit.nodes.evaluation import set_fid as fid_node
from precise_edit.nodes.evaluation.nodes import EditMetrics
from precise_edit.server import routes
from precise_edit.server.store import Invalid, NewItem, RatingStore


def _png(color=(10, 20, 30), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _data(root: Path, entries: dict) -> Path:
    """A PIE-Bench-style data set: one 8x8 image, the given mapping entries."""
    (root / "annotation_images").mkdir(parents=True)
    (root / "annotation_images" / "a.png").write_bytes(_png())
    (root / "mapping_file.json").write_text(json.dumps(entries))
    return root


def _entry(**kw):
    return {"image_path": "a.png", "original_prompt": "a cat", "editing_prompt": "a dog",
            "editing_instruction": "make it a dog", "editing_type_id": "1", "mask": [0, 8], **kw}


# --- 1. only the method folders run.json names are read ------------------------------------------

def _run_with_stale_folder(out: Path) -> None:
    """A runner output after a rerun with one setting changed: plain__old (stale) and plain__new."""
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"methods": {"plain": {"dir": "plain__new"}}}))
    for d in ("plain__old", "plain__new"):
        case = out / "cases" / d / "c1"
        case.mkdir(parents=True)
        (case / "edited.png").write_bytes(_png())
        (case / "record.json").write_text(json.dumps({"case_id": "c1", "status": "ok"}))


def test_fid_and_lmm_read_only_the_method_folder_of_run_json(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run_with_stale_folder(out)
    assert folders.image_files(out) == [out / "cases" / "plain__new" / "c1" / "edited.png"]
    assert folders.image_files(out, "plain") == [out / "cases" / "plain__new" / "c1" / "edited.png"]
    data = _data(tmp_path / "data", {"c1": _entry()})
    monkeypatch.setattr(lmm, "judge", lambda *a, **k: lmm.Judgement(None, error="no endpoint"))
    rc = judge_cli.main(["lmm", "--run", str(out), "--data", str(data), "--endpoint", "http://127.0.0.1:9/v1",
                         "--model", "m", "--max-retries", "0"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "lmm_scores.csv")))
    assert [(r["case_id"], r["method"]) for r in rows] == [("c1", "plain")]


# --- 2. case ids differing only by '/' vs '_' get their own folders; old runs resume -------------

def _cfg(tmp_path, data: Path) -> runner.RunConfig:
    m = Method("plain", {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}})
    return runner.RunConfig(data / "mapping_file.json", data / "annotation_images", tmp_path / "out", [m],
                            ["http://127.0.0.1:9"], MetricSettings(enabled=False), progress=False)


def test_case_ids_differing_by_slash_and_underscore_keep_both_results(tmp_path, monkeypatch):
    data = _data(tmp_path / "data", {"x/y": _entry(editing_prompt="first"), "x_y": _entry(editing_prompt="second")})
    calls = []

    def fake_execute(url, method, case, image_png, mask_png, metrics):
        calls.append(case["case_id"])
        return {"record": {"status": "ok", "error": "", "seconds": 1.0, "server": url,
                           "prompt": case["editing_prompt"]},
                "files": {"edited.png": _png()}}

    monkeypatch.setattr(runner, "execute_case", fake_execute)
    cfg = _cfg(tmp_path, data)
    runner.run(cfg, load_cases(data / "mapping_file.json"))
    records = [json.loads(p.read_text()) for p in (cfg.out / "cases").glob("*/*/record.json")]
    assert sorted((r["case_id"], r["prompt"]) for r in records) == [("x/y", "first"), ("x_y", "second")]
    # rerunning skips both (each folder holds its own case's record)
    assert runner.run(cfg, load_cases(data / "mapping_file.json"))["skipped"] == 2


def test_runs_made_before_unique_folder_names_resume(tmp_path, monkeypatch):
    data = _data(tmp_path / "data", {"a/b": _entry()})
    cfg = _cfg(tmp_path, data)
    legacy = cfg.out / "cases" / runner.method_dir(cfg, cfg.methods[0]) / "a_b"
    legacy.mkdir(parents=True)
    (legacy / "record.json").write_text(json.dumps({
        "case_id": "a/b", "method": "plain", "method_dir": legacy.parent.name, "editing_type_id": "1",
        "editing_type": "change object", "status": "ok", "error": "", "seconds": 1.0, "server": "", "attempts": 1}))
    monkeypatch.setattr(runner, "execute_case", lambda *a, **k: pytest.fail("an ok case was run again"))
    assert runner.run(cfg, load_cases(data / "mapping_file.json"))["skipped"] == 1


# --- 3. a null or empty-string mask is a failed case ---------------------------------------------

@pytest.mark.parametrize("mask", [None, ""])
def test_null_mask_is_a_failed_case_not_an_empty_mask(tmp_path, mask):
    data = _data(tmp_path / "data", {"c": _entry(mask=mask), "ok": _entry(mask=[])})
    cases = {c.case_id: c for c in load_cases(data / "mapping_file.json")}
    assert "'mask' must be a list" in cases["c"].error
    assert cases["ok"].error == ""


# --- 4 / 5. unreadable FID images and NaN batches are named --------------------------------------

class _FakeInception:
    def __call__(self, b):
        g = torch.Generator().manual_seed(int(b.float().sum()) % 1000)
        return (torch.rand(len(b), set_fid.FEATURE_DIM, generator=g),)


@pytest.fixture
def fake_inception(monkeypatch, tmp_path):
    monkeypatch.setattr(set_fid, "inception", lambda *a, **k: _FakeInception())
    monkeypatch.setattr(fid_node, "inception_path", lambda name: str(tmp_path / "inception.pth"))
    (tmp_path / "inception.pth").write_bytes(b"x")
    for name in ("edited", "reference"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray((np.random.rand(16, 16, 3) * 255).astype(np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "edited" / "broken.png").write_bytes(b"not an image")
    return tmp_path


def test_unreadable_image_in_an_fid_folder_is_named(fake_inception, capsys):
    root = fake_inception
    with pytest.raises(NodeInputError, match=r"SetFID: edited: cannot read the image .*broken\.png"):
        fid_node.SetFID.execute(set_fid.INCEPTION_FILE, str(root / "edited"), str(root / "reference"))
    rc = judge_cli.main(["fid", "--edited", str(root / "edited"), "--reference", str(root / "reference"),
                         "--inception", str(root / "inception.pth")])
    assert rc == 2
    assert "judge_edits fid: cannot read the image" in capsys.readouterr().err


def test_nan_batch_is_refused_by_setfid(fake_inception):
    x = torch.rand(3, 16, 16, 3)
    with pytest.raises(NodeInputError, match="SetFID: 'reference': .*NaN"):
        fid_node.SetFID.execute(set_fid.INCEPTION_FILE, "", "", "", x, torch.full_like(x, float("nan")))


# --- 5, 6, 7, 10, 11: EditMetrics ----------------------------------------------------------------

from test_eval_metrics import model_dirs  # noqa: E402,F401  (the same empty models/lpips, models/dino folders)


def _images(h=32, w=32):
    g = torch.Generator().manual_seed(0)
    src = torch.rand(1, h, w, 3, generator=g)
    edit = (src + 0.1 * torch.rand(1, h, w, 3, generator=g)).clamp(0, 1)
    mask = torch.zeros(1, h, w)
    mask[:, h // 4: h // 2, w // 4: w // 2] = 1
    return src, edit, mask


def _metrics(src, edit, mask, **kw):
    return EditMetrics.execute(src, edit, mask, **kw).args[0]


def test_nan_images_are_refused_by_editmetrics(model_dirs):
    src, edit, mask = _images()
    with pytest.raises(NodeInputError, match="EditMetrics: the edited image holds NaN"):
        _metrics(src, torch.full_like(edit, float("nan")), mask)


def test_images_in_0_255_are_refused_not_clipped(model_dirs):
    src, edit, mask = _images()
    with pytest.raises(NodeInputError, match=r"EditMetrics: the source image .*images must be 0\.\.1"):
        _metrics(src * 255, edit * 255, mask)


def test_truncated_weight_files_are_not_available_with_the_file_named(model_dirs):
    torch.save({"w": torch.zeros(1000)}, model_dirs["dino"] / "full.pth")
    data = (model_dirs["dino"] / "full.pth").read_bytes()
    for path in (model_dirs["dino"] / models.DINO_DEFAULT, model_dirs["lpips"] / "squeezenet1_1-b8a52dc0.pth"):
        path.write_bytes(data[: len(data) // 2])
    src, edit, mask = _images()
    (row,) = _metrics(src, edit, mask)
    assert row["metrics"]["structure_distance"] is None and row["metrics"]["lpips_edit_part"] is None
    assert row["metrics"]["psnr_edit_part"] is not None
    for name in (models.DINO_DEFAULT, "squeezenet1_1-b8a52dc0.pth"):
        assert any(name in n and "unreadable" in n for n in row["notes"]), row["notes"]


def test_tiny_images_have_no_ssim_and_empty_ones_are_refused(model_dirs):
    src, edit, mask = _images(4, 4)
    (row,) = _metrics(src, edit, mask, mask_convention="as given")
    assert row["metrics"]["ssim_edit_part"] is None and row["metrics"]["psnr_edit_part"] is not None
    assert "at least 11x11" in row["unavailable"]["ssim_edit_part"]
    with pytest.raises(NodeInputError, match="EditMetrics: the source image is empty"):
        _metrics(torch.rand(1, 0, 0, 3), torch.rand(1, 0, 0, 3), torch.zeros(1, 0, 0))


def test_mask_with_a_channel_axis_is_accepted(model_dirs):
    src, edit, mask = _images()
    assert _metrics(src, edit, mask[:, None]) == _metrics(src, edit, mask)


# --- 8, 9. rating requests out of range, reused client_id ----------------------------------------

@pytest.fixture
def study(tmp_path):
    store = RatingStore(tmp_path / "rating", busy_timeout=0.2)
    items = [NewItem(f"make it {i}", _png((i, 0, 0)), [(f"m{j}", _png((i, j, 1))) for j in range(2)], str(i))
             for i in range(2)]
    made = store.create_study("s", items)
    return store, made


@pytest.mark.parametrize("name", [5, ["a"], {"n": 1}])
def test_join_with_a_name_that_is_not_text_is_invalid(study, name):
    store, made = study
    with pytest.raises(Invalid, match="name"):
        store.join(made["study"], made["rater_key"], name)


def test_huge_item_id_is_invalid_and_overflow_is_a_400(study):
    store, made = study
    token = store.join(made["study"], made["rater_key"], "ann")
    with pytest.raises(Invalid, match="item"):
        store.save_answer(token, 2 ** 70, {}, None)

    async def overflowing(request):
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    response = asyncio.run(routes._errors(overflowing)(None))
    assert response.status == 400 and b"out of range" in response.body


def test_client_id_reused_for_another_item_is_refused(study):
    store, made = study
    token = store.join(made["study"], made["rater_key"], "ann")
    first, second = store.rater_view(token)["items"]
    scores = lambda it: {str(e["id"]): [3, 4] for e in it["edits"]}  # noqa: E731
    assert store.save_answer(token, first["id"], scores(first), None, "c1")["saved"]
    assert store.save_answer(token, first["id"], scores(first), None, "c1") == {"saved": True, "resent": True}
    with pytest.raises(Invalid, match="client_id"):
        store.save_answer(token, second["id"], scores(second), None, "c1")
    assert store.rater_view(token)["done"] == 1


def test_a_dino_file_of_another_network_makes_only_its_metric_unavailable(model_dirs):
    """It stopped the whole EditMetrics node; now it is n/a like a missing file, with the reason."""
    torch.save({"backbone.cls_token": torch.zeros(1, 1, 64)}, model_dirs["dino"] / models.DINO_DEFAULT)
    src, edit, mask = _images()
    (row,) = _metrics(src, edit, mask)
    assert row["metrics"]["structure_distance"] is None and row["metrics"]["psnr_edit_part"] is not None
    assert any("not a DINO ViT checkpoint" in n and models.DINO_DEFAULT in n for n in row["notes"]), row["notes"]

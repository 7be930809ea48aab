"""SetFID / set_fid: the same FID and KID as torch-fidelity's own pipeline (calculate_metrics on the
same folders, with the same random-weight InceptionV3 file) and as pytorch-fid's formula (scipy sqrtm)
on the same features; sample-size warnings; missing weights and bad folders named."""
from __future__ import annotations

import json
import math
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

import folder_paths
from precise_edit.bench import set_fid as folders
from precise_edit.kernels import set_fid
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.evaluation import set_fid as node_mod
from precise_edit.nodes.evaluation.set_fid import SetFID


@pytest.fixture(scope="module", autouse=True)
def small_inception_input():
    """Speed for 2 loaded CPU cores, the same on both sides of every comparison: the network resizes
    images to 80 px instead of 299 (InceptionV3's minimum is 75), and the statistics use its 768-d
    features instead of the 2048-d pool (the 2048 x 2048 eigenvalue problem alone takes ~10 s here)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with mock.patch.object(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 80), \
            mock.patch.object(set_fid, "FEATURE", "768"), mock.patch.object(set_fid, "FEATURE_DIM", 768):
        yield


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """torch-fidelity's InceptionV3 with random (He-scaled, seeded) weights, saved as its weights file."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("running_var"):
            sd[k] = torch.ones_like(v)
        elif k.endswith("running_mean") or k.endswith("bias"):
            sd[k] = 0.05 * torch.randn(v.shape, generator=g)
        elif v.dim() > 1:
            fan_in = v[0].numel()
            sd[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif v.is_floating_point():
            sd[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = v
    path = tmp_path_factory.mktemp("inception") / set_fid.INCEPTION_FILE
    torch.save(sd, path)
    return path


def _write_set(folder, n, seed, shift=0.0, size=48):
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b = g.uniform(2, 9, 2)
        img = np.stack([np.sin(a * xx + i), np.cos(b * yy), np.sin(a * xx * yy + shift)], -1) * 0.5 + 0.5
        img = np.clip(img + shift * 0.3 + g.normal(0, 0.05, img.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    return _write_set(root / "edited", 6, 1, shift=0.4), _write_set(root / "reference", 6, 2)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 6 samples: singular covariances
def test_folders_match_torch_fidelity_and_pytorch_fid_formula(inception_file, two_sets):
    import scipy.linalg
    import torch_fidelity

    edited, reference = two_sets
    ours = folders.fid_of_folders(edited, reference, str(inception_file), batch_size=4)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(edited), input2=str(reference), fid=True, kid=True, kid_subset_size=6, cuda=False,
        feature_extractor_weights_path=str(inception_file), cache=False,
        feature_layer_fid="768", feature_layer_kid="768", verbose=False, save_cpu_ram=True)
    assert ours.fid > 0.01
    assert ours.fid == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours.kid_mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4, abs=1e-9)
    assert (ours.n_edited, ours.n_reference, ours.kid_subset_size) == (6, 6, 6)
    assert any("only 6 images" in w for w in ours.warnings)

    # pytorch-fid's formula (scipy sqrtm of the covariance product) on the same features
    model = set_fid.inception(str(inception_file))
    f1 = set_fid.features(model, folders.batches(folders.image_files(edited))).double().numpy()
    f2 = set_fid.features(model, folders.batches(folders.image_files(reference))).double().numpy()
    mu1, mu2, s1, s2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert f1.shape == (6, 768)
    assert ours.fid == pytest.approx(ref, rel=1e-3)


def test_node_batches_equal_folders_and_runner_output(inception_file, two_sets, tmp_path, monkeypatch):
    edited, reference = two_sets
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "inception",
                        ([str(inception_file.parent)], {".pth"}))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    # a runner output folder holding the same edits (two methods: one must be named)
    run = tmp_path / "run"
    (run / "cases").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    for i, f in enumerate(sorted(edited.glob("*.png"))):
        for m in ("kv__ab12", "plain__cd34"):
            (run / "cases" / m / f"case{i:03d}").mkdir(parents=True)
            (run / "cases" / m / f"case{i:03d}" / "edited.png").write_bytes(f.read_bytes())
    direct = folders.fid_of_folders(edited, reference, str(inception_file))
    out = SetFID.execute(set_fid.INCEPTION_FILE, str(run), str(reference), "kv")
    assert out.result[0] == pytest.approx(direct.fid, rel=1e-5)
    assert "6 edited, 6 reference" in out.result[2] and "warning: only 6 images" in out.result[2]
    assert json.loads(out.ui["set_fid"][0])["n_edited"] == 6

    def batch(folder):
        return torch.stack([folders.load_uint8(f).permute(1, 2, 0).float() / 255
                            for f in folders.image_files(folder)])
    out = SetFID.execute(set_fid.INCEPTION_FILE, "", "", "", batch(edited), batch(reference))
    assert out.result[0] == pytest.approx(direct.fid, rel=1e-5)
    assert out.result[1] == pytest.approx(direct.kid_mean, rel=1e-5, abs=1e-9)

    with pytest.raises(NodeInputError, match=r"SetFID: edited_folder: the run .* several methods \(kv, plain\)"):
        SetFID.execute(set_fid.INCEPTION_FILE, str(run), str(reference), "")
    with pytest.raises(NodeInputError, match=r"method 'nope' is not in the run"):
        SetFID.execute(set_fid.INCEPTION_FILE, str(run), str(reference), "nope")


def test_missing_weights_and_bad_sets_are_named(tmp_path, monkeypatch, two_sets):
    edited, reference = two_sets
    empty = tmp_path / "inception"
    empty.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "inception", ([str(empty)], {".pth"}))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    with pytest.raises(NodeInputError, match=rf"SetFID: {set_fid.INCEPTION_FILE} not found in {empty}"):
        SetFID.execute(set_fid.INCEPTION_FILE, str(edited), str(reference))
    with pytest.raises(NodeInputError, match="SetFID: connect 'reference' images or give reference_folder"):
        SetFID.execute(set_fid.INCEPTION_FILE, str(edited), "")
    with pytest.raises(NodeInputError, match=r"SetFID: reference_folder: no images in"):
        SetFID.execute(set_fid.INCEPTION_FILE, str(edited), str(empty))
    with pytest.raises(ValueError, match="at least 2 images"):
        set_fid.score(torch.zeros(1, 2048), torch.zeros(5, 2048))


def test_command_fid_over_folders(inception_file, two_sets, tmp_path, capsys):
    from precise_edit.bench.judge_cli import main

    edited, reference = two_sets
    assert main(["fid", "--edited", str(edited), "--reference", str(reference), "--inception",
                 str(tmp_path / "nope.pth")]) == 2
    assert f"nope.pth not found in {tmp_path}" in capsys.readouterr().err
    assert main(["fid", "--edited", str(edited), "--reference", str(reference), "--inception",
                 str(inception_file)]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out[cap.out.index("{"):])
    assert out["n_edited"] == 6 and out["fid"] == pytest.approx(
        folders.fid_of_folders(edited, reference, str(inception_file)).fid, rel=1e-6)
    assert "warning: only 6 images" in cap.err

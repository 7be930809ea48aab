"""Evaluation kernels (kernels/metrics.py, pie_masks.py, set_fid.py): behaviour the mutation run
found unguarded (issue 14). These numbers end up in reported tables, so edge cases (clipping, empty
parts, small sets, mismatched models) are checked against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precise_edit.kernels import metrics as km
from precise_edit.kernels import pie_masks as pm
from precise_edit.kernels import set_fid as sf


# --------------------------------------------------------------------------------- pie_masks

def test_run_length_mask_edges():
    # runs past the end are clipped, runs starting past the end are ignored, zero-length runs add nothing
    m = pm.rle_decode([0, 2, 5, 0, 7, 10, 20, 3], (3, 3), border=False)
    assert m.tolist() == [[1, 1, 0], [0, 0, 0], [0, 1, 1]]
    assert m.dtype == np.float64 and m.shape == (3, 3)
    assert pm.rle_decode([], (2, 3), border=False).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert pm.rle_decode([4, 1], (3, 3)).tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    assert pm.rle_decode([0, 1], (4, 4), border=True)[1:3, 1:3].tolist() == [[0, 0], [0, 0]]
    for bad in ([-1, 2], [1, -2]):
        with pytest.raises(ValueError) as e:
            pm.rle_decode(bad, (3, 3))
        assert str(e.value) == "a run-length mask holds a negative start or length"
    with pytest.raises(ValueError) as e:
        pm.rle_decode([1, 2, 3], (3, 3))
    assert str(e.value) == "a run-length mask needs start/length pairs, got 3 numbers"
    assert pm.rle_decode([0, 1], border=False).shape == pm.PIE_SIZE == (512, 512)


def test_run_length_encoding_of_edges():
    m = np.zeros((2, 4))
    m[0, 3] = m[1, 0] = m[1, 3] = 1  # a run across the row end, one at the very end
    assert pm.rle_encode(m) == [3, 2, 7, 1]
    assert pm.rle_encode(np.full((2, 2), 0.5)) == []  # 0.5 is not edited
    assert pm.rle_encode(np.ones((1, 3))) == [0, 3]


def test_border_is_set_on_a_copy_for_arrays_and_tensors():
    a = np.zeros((1, 4, 5))
    b = pm.with_border(a)
    assert a.sum() == 0 and b[0].tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
    t = torch.zeros(4, 5)
    u = pm.with_border(t)
    assert t.sum() == 0 and isinstance(u, torch.Tensor) and int(u.sum()) == 14


# ----------------------------------------------------------------------------------- metrics

def test_png_quantisation_clips_out_of_range_values():
    x = torch.tensor([[[-0.2, 1.5, 1.0]]])
    assert km.to_uint8(x).tolist() == [[[0, 255, 255]]] and km.to_uint8(x).dtype == torch.uint8


def test_pixel_metrics_by_hand():
    a = torch.zeros(4, 4, 3)
    b = torch.full((4, 4, 3), 0.1)
    assert km.mse(a, b) == pytest.approx(0.01, rel=1e-5)
    assert km.psnr(a, b) == pytest.approx(20.0, rel=1e-5)  # 10 log10(1 / 0.01)
    c = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert km.ssim(c, c) == pytest.approx(1.0, abs=1e-6)
    assert km.ssim(c, 1 - c) < 0.5
    # the data range is 1 (as the reference), not the images' own range: small differences on a
    # low-contrast image keep a high SSIM (0.92 with the range read from the data)
    g = torch.Generator().manual_seed(0)
    lo = 0.5 + 0.05 * torch.rand(16, 16, 3, generator=g)
    assert km.ssim(lo + 0.02 * torch.rand(16, 16, 3, generator=g), lo) > 0.95
    mask = torch.zeros(4, 4)
    mask[:2] = 1
    r = km.region(b, mask)
    assert r[:2].allclose(torch.full((2, 4, 3), 0.1)) and r[2:].abs().sum() == 0
    assert km.region_defined(mask, "edit") and km.region_defined(mask, "unedit")
    assert not km.region_defined(torch.zeros(4, 4), "edit") and km.region_defined(torch.zeros(4, 4), "unedit")
    one = torch.zeros(4, 4)
    one[2, 3] = 1
    assert km.region_defined(one, "edit")  # a single edited pixel is a part
    assert km.region_defined(torch.ones(4, 4), "edit") and not km.region_defined(torch.ones(4, 4), "unedit")


def test_dino_input_size_and_normalisation():
    assert km.dino_resize_size(224, 224) == (224, 224)
    assert km.dino_resize_size(100, 1000) == (48, 480)  # the long side capped at 480
    assert km.dino_resize_size(1000, 100) == (480, 48)
    x = torch.full((1, 3, 224, 224), 255.0)
    y = km.dino_preprocess(x)
    assert y.shape == (1, 3, 224, 224)
    want = [(255.0 - m) / s for m, s in zip(km.IMAGENET_MEAN, km.IMAGENET_STD)]
    assert y[0, :, 0, 0].tolist() == pytest.approx(want, rel=1e-6)
    # downscaling is antialiased, as torchvision's Resize on tensors
    from torchvision.transforms import functional as TF
    big = torch.rand(1, 3, 448, 336, generator=torch.Generator().manual_seed(0)) * 255
    mean = torch.tensor(km.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(km.IMAGENET_STD).view(1, 3, 1, 1)
    ref = (TF.resize(big, 224, max_size=480, antialias=True) - mean) / std
    assert torch.allclose(km.dino_preprocess(big), ref, atol=1e-3)
    z = km.dino_preprocess(torch.full((1, 3, 100, 1000), 255.0))
    assert z.shape == (1, 3, 48, 480) and z[0, :, 10, 10].tolist() == pytest.approx(want, rel=1e-4)


def test_structure_distance_by_hand():
    k = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # a zero key: similarity 0, never NaN
    sim = km.keys_self_similarity(k)
    assert sim.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    k2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # first two keys now point the same way
    # self-similarities differ at (0,1), (1,0): (1 - 0)^2 * 2 / 9 entries
    assert km.structure_distance(k2, k) == pytest.approx(2 / 9)
    assert km.structure_distance(k, k) == 0.0
    assert torch.allclose(km.keys_self_similarity(0.01 * k), sim)  # short keys: still cosines


def test_clip_score_by_hand_and_mismatched_models():
    img, txt = torch.tensor([[3.0, 4.0]]), torch.tensor([4.0, 3.0])
    assert km.clip_score(img, txt) == pytest.approx(96.0)  # 100 * 24 / 25
    assert km.clip_score(img, -txt) == 0.0  # negative cosine: 0
    with pytest.raises(ValueError) as e:
        km.clip_score(torch.ones(1, 768), torch.ones(1, 512))
    assert str(e.value) == ("the CLIP vision model gives 768-wide embeddings but the text encoder 512-wide ones: "
                            "connect the matching pair (e.g. ViT-L/14 and CLIP-L)")


def test_table_numbers():
    assert km.finite_or_none(None) is None
    assert km.finite_or_none(float("nan")) is None and km.finite_or_none(float("inf")) is None
    assert km.finite_or_none(torch.tensor(2.5)) == 2.5 and isinstance(km.finite_or_none(3), float)


# ----------------------------------------------------------------------------------- set_fid

def _features(n, shift, seed, d=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


def test_set_score_sample_sizes_and_warnings():
    a, b = _features(12, 0.0, 0), _features(9, 1.0, 1)
    s = sf.score(a, b, kid_subsets=5, kid_subset_size=1000)
    assert (s.n_edited, s.n_reference, s.kid_subset_size) == (12, 9, 9)
    assert s.warnings == [
        f"only 9 images in the smaller set: FID over fewer than {sf.FID_MIN_IMAGES} images is biased upwards and "
        "varies with the sample; compare FIDs only at equal set sizes, and prefer KID for small sets",
        "KID subsets of 9 images (torch-fidelity's default is 1000)"]
    assert s.fid > 0 and s.kid_mean > 0 and s.kid_std >= 0
    same = sf.score(a, a.clone(), kid_subsets=5, kid_subset_size=6)
    assert same.fid == pytest.approx(0.0, abs=1e-3) and same.kid_subset_size == 6
    assert len(same.warnings) == 1  # subsets of the size asked for: no KID warning
    assert s.as_dict()["n_reference"] == 9 and set(s.as_dict()) == {
        "fid", "kid_mean", "kid_std", "n_edited", "n_reference", "kid_subset_size", "warnings"}
    with pytest.raises(ValueError) as e:
        sf.score(a[:1], b)
    assert str(e.value) == "FID needs at least 2 images per set (edited: 1, reference: 9)"
    sf.score(a[:2], b[:2], kid_subsets=2)  # two images each are enough
    assert sf.score(a[:5], b, kid_subsets=5).kid_subset_size == 5  # the smaller set may be either
    # KID as torch-fidelity computes it with its own default seed and the subsets asked for
    from torch_fidelity.metric_kid import kid_features_to_metric
    ref = kid_features_to_metric(a, b, kid_subsets=5, kid_subset_size=9, verbose=False)
    assert s.kid_mean == ref["kernel_inception_distance_mean"] and s.kid_std == ref["kernel_inception_distance_std"]
    # the seed decides the KID subsets: the same seed, the same numbers
    assert sf.score(a, b, kid_subsets=5, seed=3).kid_mean == sf.score(a, b, kid_subsets=5, seed=3).kid_mean
    assert sf.score(a, b, kid_subsets=5, seed=3).kid_mean != sf.score(a, b, kid_subsets=5, seed=4).kid_mean


def test_images_become_uint8_nchw_as_a_png_holds_them():
    x = torch.tensor([[[[0.0, 0.5, 1.2, 0.3], [0.002, 0.998, -1.0, 0.3]]]])  # [1, 1, 2, 4]: alpha dropped
    y = sf.to_uint8_nchw(x)
    assert y.shape == (1, 3, 1, 2) and y.dtype == torch.uint8
    assert y[0, :, 0, 0].tolist() == [0, 128, 255] and y[0, :, 0, 1].tolist() == [1, 254, 0]
    g = sf.to_uint8_nchw(torch.full((2, 3, 5, 1), 0.5))  # grey: one channel repeated
    assert g.shape == (2, 3, 3, 5) and g.is_contiguous() and int(g.float().std()) == 0


def test_features_of_batches():
    seen = []

    def model(b):
        seen.append((b.dtype, tuple(b.shape)))
        return (b.float().mean(dim=(2, 3)).repeat(1, 2).double(),)

    batches = [torch.full((2, 3, 4, 4), 10, dtype=torch.uint8), torch.full((1, 3, 4, 4), 20, dtype=torch.uint8)]
    f = sf.features(model, batches)
    assert f.dtype == torch.float32 and f.shape == (3, 6) and f[:, 0].tolist() == [10.0, 10.0, 20.0]
    assert seen == [(torch.uint8, (2, 3, 4, 4)), (torch.uint8, (1, 3, 4, 4))]
    assert sf.features(model, []).shape == (0, sf.FEATURE_DIM)
    with pytest.raises(ValueError) as e:
        sf.features(model, [torch.zeros(1, 3, 4, 4)])
    assert str(e.value) == "images must be uint8 [B, 3, H, W]"
    assert math.isclose(sf.FEATURE_DIM, 2048) and sf.FID_MIN_IMAGES == 2048


# ---------------------------------------------------------------------------------- dino_vit

from dino_weights import tiny_dino_state  # noqa: E402
from precise_edit.kernels.dino_vit import DinoViT  # noqa: E402


def _ckpt(dim=128, depth=3, patch=4, grid=4, seed=0, prefix=""):
    sd = tiny_dino_state(dim, depth, patch, grid, seed, scale=0.1, final_norm=False)
    return {prefix + k: v.double() for k, v in sd.items()}


def _torch_keys(sd, pixels, layer, dim=128, heads=2, patch=4, grid=4):
    """The same ViT from torch.nn's pre-norm TransformerEncoderLayer (an independent implementation)."""
    sd = {k: v.float() for k, v in sd.items()}
    x = torch.nn.functional.conv2d(pixels, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    b, _, h0, w0 = x.shape
    pos = sd["pos_embed"]
    if (h0, w0) != (grid, grid):
        g = pos[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        g = torch.nn.functional.interpolate(g, size=(h0, w0), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], g.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)], 1)
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], 1) + pos
    for i in range(layer):
        blk = torch.nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                               layer_norm_eps=1e-6, batch_first=True, norm_first=True).eval()
        p = f"blocks.{i}."
        blk.load_state_dict({
            "self_attn.in_proj_weight": sd[p + "attn.qkv.weight"], "self_attn.in_proj_bias": sd[p + "attn.qkv.bias"],
            "self_attn.out_proj.weight": sd[p + "attn.proj.weight"], "self_attn.out_proj.bias": sd[p + "attn.proj.bias"],
            "linear1.weight": sd[p + "mlp.fc1.weight"], "linear1.bias": sd[p + "mlp.fc1.bias"],
            "linear2.weight": sd[p + "mlp.fc2.weight"], "linear2.bias": sd[p + "mlp.fc2.bias"],
            "norm1.weight": sd[p + "norm1.weight"], "norm1.bias": sd[p + "norm1.bias"],
            "norm2.weight": sd[p + "norm2.weight"], "norm2.bias": sd[p + "norm2.bias"]})
        with torch.no_grad():
            x = blk(x)
    p = f"blocks.{layer}."
    xn = torch.nn.functional.layer_norm(x, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
    return torch.nn.functional.linear(xn, sd[p + "attn.qkv.weight"][dim:2 * dim], sd[p + "attn.qkv.bias"][dim:2 * dim])


@pytest.mark.parametrize("size, layer", [((16, 16), -1), ((16, 16), 1), ((8, 24), 0), ((12, 20), 2),
                                         ((8, 8), 1), ((8, 32), 1)])  # a smaller square grid; 2 x 8 = 16 tokens
def test_dino_keys_equal_torch_transformer_layers(size, layer):
    sd = _ckpt(prefix="module.")  # DDP-saved checkpoints carry a "module." prefix
    vit = DinoViT(sd)
    assert (vit.dim, vit.patch, vit.depth, vit.heads) == (128, 4, 3, 2)
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    got = vit.to("cpu").keys(pixels, layer=layer)
    want = _torch_keys({k.removeprefix("module."): v for k, v in sd.items()}, pixels, layer % 3)
    assert got.dtype == torch.float32 and got.shape == (2, 1 + (size[0] // 4) * (size[1] // 4), 128)
    assert torch.allclose(got, want, atol=2e-4, rtol=1e-4)


def test_dino_checkpoint_checks():
    with pytest.raises(ValueError) as e:
        DinoViT({"backbone.cls_token": torch.zeros(1, 1, 64)})
    assert str(e.value) == "not a DINO ViT checkpoint (no pos_embed, patch_embed.proj.weight)"
    sd = _ckpt(dim=64, depth=1, prefix="backbone.")
    v = DinoViT(sd)
    assert (v.heads, v.depth, v.eps) == (1, 1, 1e-6) and DinoViT(sd, heads=4).heads == 4
    assert all(t.dtype == torch.float32 for t in v.sd.values())


def test_inception_is_built_from_the_given_file_in_eval_mode(monkeypatch):
    """The 2048-d pool features of the TF-compatible network, weights from the path given (never a
    download), in eval mode (batch norm statistics frozen)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    made = {}

    class Fake(torch.nn.Module):
        def __init__(self, name, features, feature_extractor_weights_path=None):
            super().__init__()
            made.update(name=name, features=features, path=feature_extractor_weights_path)
            self.bn = torch.nn.BatchNorm1d(2)

    monkeypatch.setattr(fe, "FeatureExtractorInceptionV3", Fake)
    model = sf.inception("/models/inception.pth")
    assert made == {"name": "inception-v3-compat", "features": ["2048"], "path": "/models/inception.pth"}
    assert isinstance(model, Fake) and not model.training


def test_full_size_sets_get_no_warning():
    a, b = _features(sf.FID_MIN_IMAGES, 0.0, 0, d=4), _features(sf.FID_MIN_IMAGES, 0.5, 1, d=4)
    s = sf.score(a, b, kid_subsets=2)
    assert s.warnings == [] and s.kid_subset_size == sf.KID_SUBSET_SIZE == 1000

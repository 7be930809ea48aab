"""EditMetrics agrees with the implementations PIE-Bench's reference code calls (torchmetrics'
PSNR / MSE / SSIM / LPIPS / CLIPScore, the DINO key self-similarity), on the same inputs and the same
(small, random) weights; masks decode as PIE-Bench's RLE; missing models and empty masks give
"not available", never NaN."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import folder_paths
from dino_weights import tiny_dino_state
from precise_edit.kernels import metrics as km
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.evaluation import measure, models
from precise_edit.nodes.evaluation.nodes import EditMetrics


def _images(h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    src = torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(8 * xx) * torch.cos(6 * yy)], -1)
    edit = (src + 0.15 * torch.rand(h, w, 3, generator=g)).clamp(0, 1)
    mask = torch.zeros(h, w)
    mask[h // 4: h // 2, w // 3: 2 * w // 3] = 1
    edit[mask > 0] = torch.rand(int(mask.sum()), 3, generator=g)
    return src, edit, mask


@pytest.fixture()
def model_dirs(tmp_path, monkeypatch):
    """Empty models/lpips and models/dino folders for this test."""
    dirs = {}
    for kind in ("lpips", "dino"):
        d = tmp_path / kind
        d.mkdir()
        dirs[kind] = d
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind, ([str(d)], models.MODEL_EXTENSIONS))
    monkeypatch.setattr(models, "_cache", {})
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return dirs


# --- masks ------------------------------------------------------------------------------------

def _reference_decode(encoded, shape):
    """PIE-Bench's mask_decode semantics, written out naively: each (start, length) run set to 1,
    clipped at the end of the image, then the one-pixel border set to 1."""
    n = shape[0] * shape[1]
    flat = np.zeros(n)
    for i in range(0, len(encoded), 2):
        for j in range(min(encoded[i + 1], n - encoded[i])):
            flat[encoded[i] + j] = 1
    m = flat.reshape(shape)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = 1
    return m


def test_rle_decode_matches_pie_bench_semantics_and_roundtrips():
    rng = np.random.default_rng(0)
    shape = (40, 56)
    runs = []
    for start in sorted(rng.choice(40 * 56, 12, replace=False)):
        runs += [int(start), int(rng.integers(1, 90))]
    runs += [40 * 56 - 5, 50]  # a run past the end is clipped, as the reference does
    np.testing.assert_array_equal(km.rle_decode(runs, shape), _reference_decode(runs, shape))
    inner = km.rle_decode(runs, shape, border=False)
    assert inner[0].sum() < shape[1]  # no forced border without the convention
    assert km.rle_decode(km.rle_encode(inner), shape, border=False).tolist() == inner.tolist()
    with pytest.raises(ValueError, match="pairs"):
        km.rle_decode([1, 2, 3], shape)


# --- pixel metrics against torchmetrics' modules, used the reference's way ---------------------

def _reference_pixel(metric, edit8, src8, mask):
    """PnPInversion's calculate_{psnr,mse,ssim}: uint8 / 255 * mask, torchmetrics modules."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
    from torchmetrics.regression import MeanSquaredError

    a = edit8.astype(np.float32) / 255 * mask[..., None].astype(np.float32)
    b = src8.astype(np.float32) / 255 * mask[..., None].astype(np.float32)
    ta, tb = torch.tensor(a).permute(2, 0, 1), torch.tensor(b).permute(2, 0, 1)
    if metric == "mse":
        return float(MeanSquaredError()(ta.contiguous(), tb.contiguous()))
    mod = PeakSignalNoiseRatio(data_range=1.0) if metric == "psnr" else StructuralSimilarityIndexMeasure(data_range=1.0)
    return float(mod(ta[None], tb[None]))


def test_pixel_metrics_equal_reference_on_both_parts(model_dirs):
    src, edit, mask = _images()
    res = measure.evaluate(src, edit, mask, settings=measure.Settings())
    src8, edit8 = km.to_uint8(src).numpy(), km.to_uint8(edit).numpy()
    ref_mask = km.with_border(mask.numpy())
    for part, m in (("unedit", 1 - ref_mask), ("edit", ref_mask)):
        for metric in ("psnr", "mse", "ssim"):
            ours = res.values[f"{metric}_{part}_part"]
            assert ours == pytest.approx(_reference_pixel(metric, edit8, src8, m), rel=1e-5, abs=1e-7), (metric, part)
    assert res.mask_convention == "pie-bench border"
    # "as given" leaves the border out of the edited part: the numbers change
    plain = measure.evaluate(src, edit, mask, settings=measure.Settings(mask_convention="as given"))
    assert plain.values["mse_unedit_part"] != res.values["mse_unedit_part"]


def test_images_are_measured_as_saved_pngs():
    x = torch.tensor([[[0.999, 0.5, 0.0039]]])
    assert km.to_uint8(x).tolist() == [[[254, 127, 0]]]  # SaveImage truncates


# --- LPIPS: the lpips package vs torchmetrics' LPIPS (the reference), same backbone weights -----

def test_lpips_matches_torchmetrics_with_the_same_backbone(model_dirs):
    import torchvision
    from torchmetrics.functional.image.lpips import _LPIPS

    tv = torchvision.models.squeezenet1_1()
    torch.manual_seed(1)
    for p in tv.parameters():
        p.data.normal_(0, 0.05)
    torch.save(tv.state_dict(), model_dirs["lpips"] / "squeezenet1_1-b8a52dc0.pth")
    src, edit, mask = _images(64, 64)
    res = measure.evaluate(src, edit, mask)

    ref_net = _LPIPS(pretrained=True, net="squeeze", pnet_rand=True).eval()
    models.load_lpips_backbone(ref_net, tv.state_dict())
    src8, edit8 = km.to_uint8(src).numpy(), km.to_uint8(edit).numpy()
    ref_mask = km.with_border(mask.numpy())
    for part, m in (("unedit", 1 - ref_mask), ("edit", ref_mask)):
        a = torch.tensor(edit8.astype(np.float32) / 255 * m[..., None]).permute(2, 0, 1)[None].float()
        b = torch.tensor(src8.astype(np.float32) / 255 * m[..., None]).permute(2, 0, 1)[None].float()
        ref = float(ref_net(a * 2 - 1, b * 2 - 1).reshape(-1)[0])
        assert res.values[f"lpips_{part}_part"] == pytest.approx(ref, rel=1e-5)
    assert res.values["lpips_unedit_part"] > 0


# --- structure distance: our DINO ViT vs transformers' ViT with the same weights ---------------

def _tiny_dino_checkpoint(dim=128, depth=2, patch=8, grid=28, seed=3):
    return tiny_dino_state(dim, depth, patch, grid, seed, scale=0.05, qkv_scale=0.2)


def _hf_keys(sd, pixels, dim=128, depth=2, patch=8):
    """Last-block keys from transformers' ViTModel holding the same weights (an independent ViT)."""
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=dim // 64, intermediate_size=4 * dim,
                    image_size=224, patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True)
    vit = ViTModel(cfg, add_pooling_layer=False).eval()
    state = vit.state_dict()
    new = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"]}
    for i in range(depth):
        b, s = f"blocks.{i}.", f"layers.{i}."
        q, k, v = sd[b + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = sd[b + "attn.qkv.bias"].chunk(3)
        new.update({s + "attention.q_proj.weight": q, s + "attention.k_proj.weight": k, s + "attention.v_proj.weight": v,
                    s + "attention.q_proj.bias": qb, s + "attention.k_proj.bias": kb, s + "attention.v_proj.bias": vb,
                    s + "attention.o_proj.weight": sd[b + "attn.proj.weight"], s + "attention.o_proj.bias": sd[b + "attn.proj.bias"],
                    s + "layernorm_before.weight": sd[b + "norm1.weight"], s + "layernorm_before.bias": sd[b + "norm1.bias"],
                    s + "layernorm_after.weight": sd[b + "norm2.weight"], s + "layernorm_after.bias": sd[b + "norm2.bias"],
                    s + "mlp.fc1.weight": sd[b + "mlp.fc1.weight"], s + "mlp.fc1.bias": sd[b + "mlp.fc1.bias"],
                    s + "mlp.fc2.weight": sd[b + "mlp.fc2.weight"], s + "mlp.fc2.bias": sd[b + "mlp.fc2.bias"]})
    if not set(new) <= set(state):
        pytest.skip("this transformers version names ViT weights differently")
    state.update(new)
    vit.load_state_dict(state)
    got = {}
    handle = vit.layers[depth - 1].attention.k_proj.register_forward_hook(lambda m, i, o: got.setdefault("k", o))
    with torch.no_grad():
        vit(pixels)
    handle.remove()
    return got["k"]


def test_structure_distance_matches_reference_computation(model_dirs):
    from torchvision import transforms

    sd = _tiny_dino_checkpoint()
    torch.save(sd, model_dirs["dino"] / models.DINO_DEFAULT)
    src, edit, mask = _images(96, 96)
    res = measure.evaluate(src, edit, mask)

    # the reference: 0..255 floats, Resize(224, max_size=480) + ImageNet normalisation, keys of the
    # last block, cosine self-similarity, MSE (target = source)
    tf = transforms.Compose([transforms.Resize(224, max_size=480),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    def sim(img):  # noqa: E306
        k = _hf_keys(sd, tf(km.to_uint8(img).float().permute(2, 0, 1))[None])[0]
        return km.keys_self_similarity(k)
    ref = float(torch.nn.functional.mse_loss(sim(edit), sim(src)))
    assert res.values["structure_distance"] == pytest.approx(ref, rel=1e-4)
    assert ref > 0


def test_dino_resize_matches_torchvision():
    from torchvision import transforms

    for h, w in ((512, 512), (300, 700), (900, 256)):
        x = torch.rand(1, 3, h, w) * 255
        ref = transforms.Resize(224, max_size=480)(x)
        assert km.dino_resize_size(h, w) == tuple(ref.shape[-2:])


# --- CLIP score: ComfyUI's CLIP vision + text encoder vs torchmetrics' CLIPScore ---------------

def _tiny_clip(tmp_path):
    import transformers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    import comfy.sd1_clip as sd1_clip

    tok_dir = folder_paths.base_path + "/comfy/sd1_tokenizer"
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", eos_token_id=49407,
                bos_token_id=49406, pad_token_id=49407)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
                  patch_size=32, hidden_act="quick_gelu")
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    torch.manual_seed(5)
    hf = CLIPModel(cfg).eval()
    for name, p in hf.named_parameters():
        p.data.normal_(0, 0.1)
        if "norm" in name:  # gains near 1, no bias: embeddings follow the input, not the biases
            p.data.add_(1.0) if name.endswith("weight") else p.data.zero_()
    hf.visual_projection.weight.data.neg_()  # with this seed the test image and "a cat" then score > 0
    hf_dir = tmp_path / "openai" / "tiny-clip"  # torchmetrics accepts paths naming "openai"
    hf.save_pretrained(hf_dir)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 224},
                                                            crop_size={"height": 224, "width": 224}),
                         tokenizer=CLIPTokenizer(f"{tok_dir}/vocab.json", f"{tok_dir}/merges.txt"))
    proc.save_pretrained(hf_dir)
    sd = hf.state_dict()

    import comfy.clip_vision
    vcfg = dict(vision, model_type="clip_vision_model", num_channels=3, layer_norm_eps=1e-5, projection_dim=32)
    (tmp_path / "v.json").write_text(json.dumps(vcfg))
    cv = comfy.clip_vision.ClipVisionModel(str(tmp_path / "v.json"))
    cv.load_sd({k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))})

    import comfy.sd
    tcfg = dict(text, projection_dim=32, layer_norm_eps=1e-5, model_type="clip_text_model")

    class Target:
        params = {"clip_model": sd1_clip.SD1CheckpointClipModel}
        tokenizer = sd1_clip.SD1Tokenizer

        @staticmethod
        def clip(**kw):
            m = sd1_clip.SD1ClipModel(clip_model=lambda **k: sd1_clip.SDClipModel(
                textmodel_json_config=tcfg, return_projected_pooled=False, **k), **{k: v for k, v in kw.items()
                                                                                  if k != "clip_model"})
            return m

    clip = comfy.sd.CLIP(Target)
    clip.load_sd({k: v for k, v in sd.items() if k.startswith(("text_model.", "text_projection."))})
    del transformers
    return hf_dir, cv, clip


def _torchmetrics_clip_score(hf_dir, image_chw_uint8, text):
    """torchmetrics' CLIPScore (update + compute) with the tiny model. torchmetrics 1.9 reads
    ``get_*_features`` as tensors while transformers 5 returns model outputs, so the model is
    wrapped to hand over the projected embeddings (``pooler_output``) as older versions did."""
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from transformers import CLIPModel, CLIPProcessor

    class Compat(CLIPModel):
        def get_image_features(self, *a, **k):
            out = super().get_image_features(*a, **k)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        def get_text_features(self, *a, **k):
            out = super().get_text_features(*a, **k)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    model, processor = Compat.from_pretrained(hf_dir).eval(), CLIPProcessor.from_pretrained(hf_dir)
    with torch.no_grad():
        score, n = _clip_score_update(image_chw_uint8, text, model, processor)
    return float(torch.max(score.sum(0) / n, torch.zeros_like(score.sum(0))))  # CLIPScore.compute


def test_clip_score_matches_torchmetrics_clipscore(tmp_path, model_dirs):
    hf_dir, clip_vision, clip = _tiny_clip(tmp_path)
    src, edit, mask = _images(224, 224)
    edit8 = km.to_uint8(edit)
    region = (edit8.numpy() * km.with_border(mask.numpy())[..., None]).astype(np.uint8)
    # random weights: take a text whose cosines are positive (CLIPScore clamps negatives to 0)
    for text in ("a cat", "a red circle on a blue table", "two dogs in the snow", "a photo of a house", "blue"):
        whole = _torchmetrics_clip_score(hf_dir, edit8.permute(2, 0, 1), text)
        part = _torchmetrics_clip_score(hf_dir, torch.tensor(region).permute(2, 0, 1), text)
        if whole > 0 and part > 0:
            break
    assert whole > 0 and part > 0 and abs(whole - part) > 1e-3
    res = measure.evaluate(src, edit, mask, target_text=text, source_text="a circle",
                           settings=measure.Settings(clip_vision=clip_vision, clip=clip))
    # ComfyUI keeps text-encoder weights in half precision on CPU: agreement to ~0.1 %
    assert res.values["clip_similarity_target_image"] == pytest.approx(whole, rel=2e-3)
    assert res.values["clip_similarity_target_image_edit_part"] == pytest.approx(part, rel=2e-3)
    assert res.values["clip_similarity_source_image"] is not None
    # a negative cosine scores 0, as CLIPScore clamps it
    assert km.clip_score(torch.tensor([1.0, 0.2]), torch.tensor([-1.0, 0.1])) == 0.0


# --- bad input ----------------------------------------------------------------------------------

def test_missing_models_name_file_and_folder_and_other_metrics_compute(model_dirs):
    src, edit, mask = _images()
    res = measure.evaluate(src, edit, mask, target_text="x")
    assert res.values["structure_distance"] is None and res.values["lpips_unedit_part"] is None
    assert models.DINO_DEFAULT in res.unavailable["structure_distance"]
    assert str(model_dirs["dino"]) in res.unavailable["structure_distance"]
    assert "squeezenet1_1" in res.unavailable["lpips_edit_part"] and str(model_dirs["lpips"]) in res.unavailable["lpips_edit_part"]
    assert "CLIP" in res.unavailable["clip_similarity_target_image"]
    assert res.values["psnr_unedit_part"] is not None and res.values["ssim_edit_part"] is not None


def test_empty_and_full_masks_report_not_available_never_nan(model_dirs):
    src, edit, _ = _images()
    empty = measure.evaluate(src, edit, torch.zeros(64, 64), settings=measure.Settings(mask_convention="as given"))
    assert all(empty.values[f"{m}_edit_part"] is None for m in ("psnr", "mse", "ssim", "lpips"))
    assert "no edited pixels" in empty.unavailable["psnr_edit_part"]
    full = measure.evaluate(src, edit, torch.ones(64, 64))
    assert all(full.values[f"{m}_unedit_part"] is None for m in ("psnr", "mse", "ssim", "lpips"))
    for r in (empty, full):
        assert not any(isinstance(v, float) and math.isnan(v) for v in r.values.values())


def test_node_sizes_batches_and_table(model_dirs):
    src, edit, mask = _images()
    big = torch.nn.functional.interpolate(edit.permute(2, 0, 1)[None], size=(96, 80))[0].permute(1, 2, 0)
    out = EditMetrics.execute(torch.stack([src, src]), big[None], mask[None], target_text="t")
    rows, table = out.args
    assert len(rows) == 2 and table.shape[-1] == 3 and table.shape[0] == 1
    assert any("resized to the source's 64x64" in n for n in rows[0]["notes"])
    assert rows[0]["metrics"]["psnr_edit_part"] is not None
    json.dumps(out.ui["edit_metrics"])  # plain JSON for the runner
    with pytest.raises(NodeInputError, match="EditMetrics: batch sizes differ"):
        EditMetrics.execute(torch.stack([src] * 2), torch.stack([edit] * 3), mask[None])
    with pytest.raises(NodeInputError, match="EditMetrics: mask_convention"):
        EditMetrics.execute(src[None], edit[None], mask[None], mask_convention="border")

"""KV-Edit bad input (issue 8, items 16-19): every case is refused as ``<Node>: <what to change>``
or handled with a notice, never a stack trace, a NaN edit or a silent default."""

import os

import pytest
import torch

import tiny_models as tm
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.kv_edit import engine as ke
from precise_edit.nodes.kv_edit.nodes import (BackgroundKVCache, KVEditCustomSampler, KVEditInversionFree,
                                              KVEditPixelPaste, KVEditSampler, KVInvert, LoadBackgroundKV,
                                              _kv_files, _startup_cleanup)

H, W = 64, 96


# ``flux`` (the tiny FLUX.1-dev model) and ``comfy_dirs`` come from conftest.py
pytestmark = pytest.mark.usefixtures("comfy_dirs")


def latent():
    return {"samples": torch.randn(1, 16, H // 8, W // 8, generator=torch.Generator().manual_seed(1))}


def cond(guidance=1.5):
    return tm.stub_conditioning("flux", "a photo", guidance=guidance)


def mask(h=H, w=W):
    m = torch.zeros(1, h, w)
    m[0, h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 1
    return m


def invert(model, m=None, lat=None, **kw):
    args = dict(mask_guided=False, storage="fp32", cache_device="cpu")
    args.update(kw)
    return KVInvert.execute(model, lat or latent(), mask() if m is None else m, cond(), 4, **args)


@pytest.fixture(scope="module")
def record(flux):
    return KVInvert.execute(flux, latent(), mask(), cond(), 4, False, "fp32", "cpu").args[0]


def edit(model, rec, **kw):
    args = dict(seed=0, skip_steps=1, reinit=False, attn_scale=1.0, mode="paper")
    args.update(kw)
    return KVEditSampler.execute(model, rec, cond(5.5), **args)


def inv_free(model, lat=None, m=None, attn_scale=1.0, **kw):
    return KVEditInversionFree.execute(model, lat or latent(), mask() if m is None else m, cond(), cond(5.5), 4, 1, 0,
                                       attn_scale, "fp32", **kw)


# -- 16: non-finite input -------------------------------------------------------------------

def test_nan_source_latent_is_refused(flux):
    bad = latent()
    bad["samples"][0, 3, 2, 5] = float("nan")
    with pytest.raises(NodeInputError, match=r"^KVInvert: the source latent holds NaN"):
        invert(flux, lat=bad)
    with pytest.raises(NodeInputError, match=r"^KVEditInversionFree: the source latent holds NaN"):
        inv_free(flux, lat=bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_attn_scale_is_refused(flux, record, value):
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: attn_scale must be a finite number"):
        edit(flux, record, attn_scale=value)
    with pytest.raises(NodeInputError, match=r"^KVEditCustomSampler: attn_scale must be a finite number"):
        KVEditCustomSampler.execute(record, 1, False, value, "paper")
    with pytest.raises(NodeInputError, match=r"^KVEditInversionFree: attn_scale must be a finite number"):
        inv_free(flux, attn_scale=value)


def test_record_with_nan_trajectory_is_refused(flux, record, tmp_path):
    bad = record.converted()
    bad.trajectory = record.trajectory.clone()
    bad.trajectory[2, 0, 1, 3, 3] = float("nan")
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: the record's trajectory holds NaN"):
        edit(flux, bad)
    BackgroundKVCache.execute(bad, "keep", "cpu", True, "nan")
    saved = next((tmp_path / "output" / "kv_cache").glob("nan_*"))
    (tmp_path / "input" / saved.name).write_bytes(saved.read_bytes())
    with pytest.raises(NodeInputError, match=r"^LoadBackgroundKV: .*trajectory holds NaN"):
        LoadBackgroundKV.execute(saved.name, "keep", "cpu")


def test_saved_record_with_nan_keys_values(record, tmp_path):
    """In memory: every entry is checked when loaded. Streamed (disk): entries are not scanned at
    load (that would read the whole file); each block's CRC-32 is verified when the edit reads it."""
    from precise_edit.kernels.kv_record import BackgroundRecord, RecordError
    bad = record.converted()
    key = sorted(bad.store.entries)[1]
    k = bad.store.entries[key]["k"].clone()
    k.view(-1)[5] = float("nan")
    bad.store.entries[key] = dict(bad.store.entries[key], k=k)
    BackgroundKVCache.execute(bad, "keep", "cpu", True, "nankv")
    saved = next((tmp_path / "output" / "kv_cache").glob("nankv_*"))
    (tmp_path / "input" / saved.name).write_bytes(saved.read_bytes())
    with pytest.raises(RecordError, match=rf"keys/values \(step {key[0]}, .* holds NaN"):
        BackgroundRecord.load(str(saved))
    with pytest.raises(NodeInputError, match=rf"^LoadBackgroundKV: {saved.name}'s keys/values \(step {key[0]},"):
        LoadBackgroundKV.execute(saved.name, "keep", "cpu")
    streamed = LoadBackgroundKV.execute(saved.name, "keep", "disk")
    assert "record place" in streamed.ui["text"][0]
    streamed.result[0].store.stop()


# -- 17: messages name the node --------------------------------------------------------------

def test_record_whose_tensors_do_not_fit_the_model(flux):
    other = tm.tiny_flux(0, hidden=64, heads=2, depth=1, single=1)
    rec = invert(other).args[0]
    rec.fingerprint = dict(rec.fingerprint, model=ke.model_fingerprint(flux))  # metadata consistent, tensors not
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: the record's keys/values .* do not fit this model"):
        edit(flux, rec)


def test_record_missing_a_step_is_refused(flux, record):
    holed = record.converted()
    holed.store.drop_step(2)
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: the record lacks keys/values for step\(s\) \[2\]"):
        edit(flux, holed)


@pytest.mark.parametrize("prefix,match", [("kv\x00edit", "characters a file name cannot have"),
                                          ("x" * 300, "300 characters long"),
                                          ("../up", "characters a file name cannot have")])
def test_bad_filename_prefix(record, prefix, match):
    with pytest.raises(NodeInputError, match=rf"^BackgroundKVCache: filename_prefix .*{match}"):
        BackgroundKVCache.execute(record, "keep", "cpu", True, prefix)


def test_unknown_storage_and_device_values(flux, record, tmp_path):
    with pytest.raises(NodeInputError, match=r"^BackgroundKVCache: storage must be one of"):
        BackgroundKVCache.execute(record, "int3", "cpu", False, "x")
    with pytest.raises(NodeInputError, match=r"^BackgroundKVCache: cache_device must be one of"):
        BackgroundKVCache.execute(record, "keep", "tpu", False, "x")
    BackgroundKVCache.execute(record, "keep", "cpu", True, "ok")
    saved = next((tmp_path / "output" / "kv_cache").glob("ok_*"))
    (tmp_path / "input" / saved.name).write_bytes(saved.read_bytes())
    with pytest.raises(NodeInputError, match=r"^LoadBackgroundKV: storage must be one of .*'int4', 'int2'"):
        LoadBackgroundKV.execute(saved.name, "int3", "cpu")
    with pytest.raises(NodeInputError, match=r"^LoadBackgroundKV: cache_device must be one of .*'disk'"):
        LoadBackgroundKV.execute(saved.name, "keep", "tpu")
    with pytest.raises(NodeInputError, match=r"^KVInvert: storage must be one of"):
        invert(flux, storage="int3")
    with pytest.raises(NodeInputError, match=r"^KVInvert: cache_device must be one of"):
        invert(flux, cache_device="gpu")
    with pytest.raises(NodeInputError, match=r"^KVInvert: mask_resize must be one of"):
        invert(flux, mask_resize="nearest")
    with pytest.raises(NodeInputError, match=r"^KVInvert: record_tokens must be one of"):
        invert(flux, record_tokens="some")
    with pytest.raises(NodeInputError, match=r"^KVEditInversionFree: storage must be one of"):
        KVEditInversionFree.execute(flux, latent(), mask(), cond(), cond(), 4, 1, 0, 1.0, "int3")


def test_unknown_mode_is_refused(flux, record):
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: mode must be one of"):
        edit(flux, record, mode="author")
    with pytest.raises(NodeInputError, match=r"^KVEditCustomSampler: mode must be one of"):
        KVEditCustomSampler.execute(record, 1, False, 1.0, "papers")
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: reinit_from must be one of"):
        edit(flux, record, reinit_from="noise")


def test_pixel_paste_batch_mismatch():
    with pytest.raises(NodeInputError, match=r"^KVEditPixelPaste: source holds 2 images and the edit 3"):
        KVEditPixelPaste.execute(torch.rand(2, 32, 32, 3), torch.rand(3, 32, 32, 3), torch.ones(1, 32, 32), 2)
    with pytest.raises(NodeInputError, match=r"^KVEditPixelPaste: the mask holds 2 masks for 3 images"):
        KVEditPixelPaste.execute(torch.rand(1, 32, 32, 3), torch.rand(3, 32, 32, 3), torch.ones(2, 32, 32), 2)
    out = KVEditPixelPaste.execute(torch.rand(1, 32, 32, 3), torch.rand(3, 32, 32, 3), torch.ones(1, 32, 32), 2)
    assert out.args[0].shape == (3, 32, 32, 3)


def test_easycache_before_kv_edit_is_named(flux, record):
    from comfy_extras.nodes_easycache import EasyCacheNode

    cached = EasyCacheNode.execute(flux, 0.2, 0.15, 0.95, False).args[0]
    with pytest.raises(NodeInputError, match=r"^KVInvert: the model has EasyCache/LazyCache applied.*before the "
                                             r"EasyCache node"):
        invert(cached)
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: the model has EasyCache"):
        edit(cached, record)


# -- 18: masks of another size -----------------------------------------------------------------

def test_mask_of_another_size(flux):
    out = invert(flux, m=mask(H * 2, W * 2))  # same aspect ratio: resized, with a notice on the node
    assert "KVInvert: the mask (192x128) was resized to the image (96x64)" in out.ui["text"][0]
    with pytest.raises(NodeInputError, match=r"^KVInvert: the mask is 96x96 but the image is about 96x64 "
                                             r"\(another aspect ratio\)"):
        invert(flux, m=mask(96, 96))
    with pytest.raises(NodeInputError, match=r"^KVEditInversionFree: the mask is 96x96"):
        inv_free(flux, m=mask(96, 96))
    ok = KVEditPixelPaste.execute(torch.rand(1, 32, 48, 3), torch.rand(1, 32, 48, 3), torch.ones(1, 64, 96), 2)
    assert "resized to the image" in ok.ui["text"][0]
    with pytest.raises(NodeInputError, match=r"^KVEditPixelPaste: the mask is 64x64"):
        KVEditPixelPaste.execute(torch.rand(1, 32, 48, 3), torch.rand(1, 32, 48, 3), torch.ones(1, 64, 64), 2)


# -- 19: leftovers and links -------------------------------------------------------------------

def test_unfinished_saves_are_cleaned(record, tmp_path):
    kv_dir = tmp_path / "output" / "kv_cache"
    kv_dir.mkdir(parents=True)
    left = kv_dir / "kv_edit_00001.bgkv.safetensors.partial"
    left.write_bytes(b"half a record")
    keep = kv_dir / "notes.partial"  # not ours
    keep.write_bytes(b"x")
    _startup_cleanup()  # what runs when ComfyUI starts
    assert not left.exists() and keep.exists()
    left.write_bytes(b"half a record")
    out = BackgroundKVCache.execute(record, "keep", "cpu", True, "kv_edit")  # and on the next save
    assert not left.exists() and "removed 1 unfinished save" in out.ui["text"][0]
    assert sorted(p.name for p in kv_dir.iterdir()) == ["kv_edit_00001.bgkv.safetensors", "notes.partial"]


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_links_outside_the_input_folder_are_not_listed(tmp_path):
    outside = tmp_path / "elsewhere.bgkv.safetensors"
    outside.write_bytes(b"x")
    inside = tmp_path / "input" / "real.bgkv.safetensors"
    inside.write_bytes(b"x")
    os.symlink(outside, tmp_path / "input" / "escape.bgkv.safetensors")
    os.symlink(inside, tmp_path / "input" / "alias.bgkv.safetensors")
    assert _kv_files() == ["alias.bgkv.safetensors", "real.bgkv.safetensors"]
    with pytest.raises(NodeInputError, match=r"^LoadBackgroundKV: no record named 'escape"):
        LoadBackgroundKV.execute("escape.bgkv.safetensors", "keep", "cpu")


# -- a probe of ordinary wiring (this round) ------------------------------------------------------

def _with_area(c):
    return [[t, {**opts, "area": (32, 48, 0, 0), "strength": 1.0}] for t, opts in c]


def test_area_conditioning_is_refused_by_every_kv_edit_node(flux, record):
    """ConditioningSetArea made the model see part of the tokens: an IndexError or 'the plan expects 24'."""
    from comfy_extras.nodes_custom_sampler import BasicGuider, DisableNoise, SamplerCustomAdvanced

    with pytest.raises(NodeInputError, match=r"^KVInvert: the source prompt has area conditioning"):
        KVInvert.execute(flux, latent(), mask(), _with_area(cond()), 4, False, "fp32", "cpu")
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: the target prompt has area conditioning"):
        KVEditSampler.execute(flux, record, _with_area(cond(5.5)), seed=0, skip_steps=1, reinit=False,
                              attn_scale=1.0, mode="paper")
    with pytest.raises(NodeInputError, match=r"^KVEditInversionFree: the source prompt has area conditioning"):
        KVEditInversionFree.execute(flux, latent(), mask(), _with_area(cond()), cond(5.5), 4, 1, 0, 1.0, "fp32")
    sampler, sigmas = KVEditCustomSampler.execute(record, 1, False, 1.0, "paper").args
    guider = BasicGuider.execute(flux, _with_area(cond(5.5))).args[0]
    with pytest.raises(NodeInputError, match=r"^KVEditCustomSampler: the guider's prompt has area conditioning"):
        SamplerCustomAdvanced.execute(DisableNoise.execute().args[0], guider, sampler, sigmas, latent())


def test_a_combined_source_prompt_is_refused_by_the_inversions(flux):
    """ConditioningCombine gave 'expected one model evaluation, saw 2' from KVInvert."""
    both = cond() + tm.stub_conditioning("flux", "another photo", guidance=1.5)
    with pytest.raises(NodeInputError, match=r"^KVInvert: the source prompt holds 2 conditionings"):
        KVInvert.execute(flux, latent(), mask(), both, 4, False, "fp32", "cpu")
    with pytest.raises(NodeInputError, match=r"^KVEditInversionFree: the source prompt holds 2 conditionings"):
        KVEditInversionFree.execute(flux, latent(), mask(), both, cond(5.5), 4, 1, 0, 1.0, "fp32")


def test_another_latent_than_the_inverted_one_is_refused(flux, record):
    """Only its shape was checked: another image's latent was ignored silently (the tooltip says checked)."""
    other = {"samples": latent()["samples"] + 0.5}
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: the latent is not the one KVInvert inverted"):
        edit(flux, record, latent=other)
    edit(flux, record, latent=latent())  # the inverted one is accepted


def test_pixel_paste_keeps_the_edit_under_a_soft_mask():
    """KVInvert edits wherever the mask is above 0; PixelPaste cut at 0.5 and pasted the source there."""
    src, edt = torch.zeros(1, H, W, 3), torch.ones(1, H, W, 3)
    out = KVEditPixelPaste.execute(src, edt, 0.5 * mask(), 0).args[0]
    assert torch.equal(out[0][mask()[0] > 0], edt[0][mask()[0] > 0])
    assert torch.equal(out[0][mask()[0] == 0], src[0][mask()[0] == 0])


def test_a_partial_schedule_is_refused_by_the_inversion(flux):
    from comfy_extras.nodes_custom_sampler import BasicScheduler

    half = BasicScheduler.execute(flux, "simple", 4, 0.5).args[0]
    with pytest.raises(NodeInputError, match=r"^KVInvert: SIGMAS start at .*denoise below 1.0"):
        KVInvert.execute(flux, latent(), mask(), cond(), 4, False, "fp32", "cpu", sigmas=half)
    ddim = BasicScheduler.execute(flux, "ddim_uniform", 4, 1.0).args[0]  # a full schedule starting at 0.90
    assert float(ddim[0]) < 0.95
    KVInvert.execute(flux, latent(), mask(), cond(), 4, False, "fp32", "cpu", sigmas=ddim)


def _double_block_replace(args, extra):
    return extra["original_block"](args)


def _scaled_block_replace(scale):
    def replace(args, extra):
        out = extra["original_block"](args)
        return {**out, "img": out["img"] * scale}
    return replace


def test_one_block_replacement_function_at_another_strength_is_refused(flux):
    """The fingerprint named a patch function only: the same function made at another strength (a
    closure, as most nodes build their patches) passed the record check and changed the edit."""
    def patched(scale):
        m = flux.clone()
        m.set_model_patch_replace(_scaled_block_replace(scale), "dit", "double_block", 0)
        return m

    record = KVInvert.execute(patched(1.0), latent(), mask(), cond(), 4, False, "fp32", "cpu").args[0]
    edit(patched(1.0), record)  # the same strength: accepted
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: this background record was made for another model"):
        edit(patched(0.5), record)


def test_block_replacements_added_after_inversion_are_refused(flux, record):
    """They passed the record check and changed the edit (the fingerprint held weights and weight patches).
    An attention override stays accepted (kernel swaps and observers: see test_kv_edit_trajectory)."""
    replaced = flux.clone()
    replaced.set_model_patch_replace(_double_block_replace, "dit", "double_block", 0)
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: this background record was made for another model"):
        edit(replaced, record)
    same = KVInvert.execute(replaced, latent(), mask(), cond(), 4, False, "fp32", "cpu").args[0]
    edit(replaced, same)  # inverted and edited with the same replacement: accepted
    assert ke.model_fingerprint(flux) == record.fingerprint["model"]  # a plain model hashes as before

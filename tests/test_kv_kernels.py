"""KV-Edit kernels: cache storage, record files, attention with cached keys/values."""
import json
import pickle

import pytest
import torch

from precise_edit.kernels.kv_attention import (append_cached, extend_bias, keep_background, mask_guided_bias,
                                               reference_attention)
from precise_edit.kernels.kv_record import BackgroundRecord, RecordError, mask_digest, sigmas_digest
from precise_edit.kernels.kv_store import KVStore, KVStoreError, bytes_per_token_step

BLOCKS = [("double", 0), ("double", 1), ("single", 0)]


def filled_store(storage="bf16", steps=3, shape=(1, 2, 5, 8), seed=0):
    gen = torch.Generator().manual_seed(seed)
    store = KVStore(storage=storage)
    for s in range(steps):
        for b in BLOCKS:
            store.put(s, b, torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
    return store


@pytest.mark.parametrize("storage,tol,size", [("fp32", 0, 4), ("bf16", 1e-2, 2), ("fp16", 1e-3, 2),
                                              ("fp8", 0.07, 1)])
def test_store_round_trip_and_size(storage, tol, size):
    k = torch.randn(1, 2, 7, 8) * 3
    v = torch.randn(1, 2, 7, 8)
    store = KVStore(storage=storage)
    store.put(4, ("single", 2), k, v)
    k2, v2 = store.get(4, ("single", 2), "cpu", torch.float32)
    assert k2.dtype == torch.float32 and k2.shape == k.shape
    rel = max(((k2 - k).abs().max() / k.abs().max()).item(), ((v2 - v).abs().max() / v.abs().max()).item())
    assert rel <= tol
    scales = 8 if storage == "fp8" else 0
    assert store.nbytes() == 2 * k.numel() * size + scales
    assert store.token_count() == 7


def test_store_copies_what_it_records():
    k = torch.zeros(1, 1, 2, 4)
    store = KVStore(storage="fp32")
    store.put(0, ("double", 0), k, k)
    k += 1  # FLUX updates tensors in place; the record must not change
    assert store.get(0, ("double", 0), "cpu", torch.float32)[0].abs().sum() == 0


def test_bytes_per_token_step_matches_authors_at_flux_dev_size():
    assert bytes_per_token_step(57, 3072, "bf16") == 700_416
    assert bytes_per_token_step(57, 3072, "fp8") == 350_208


def test_drop_step_and_peak():
    store = filled_store("fp32", steps=1)
    one_step = store.nbytes()
    store.drop_step(0)
    assert store.nbytes() == 0 and store.peak_bytes == one_step


def test_missing_entry_is_a_clear_error():
    with pytest.raises(KVStoreError, match="no recorded keys/values for step 9"):
        filled_store().get(9, ("double", 0), "cpu", torch.float32)


def test_converted_leaves_original_untouched():
    store = filled_store("fp32")
    before = store.get(1, BLOCKS[1], "cpu", torch.float32)[0].clone()
    small = store.converted("fp8")
    assert small.storage == "fp8" and small.nbytes() < store.nbytes() / 3.5
    assert torch.equal(store.get(1, BLOCKS[1], "cpu", torch.float32)[0], before)


def test_partial_attention_equals_full_attention_on_kept_queries():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 12, 16, generator=gen)
    k, v = (torch.randn(1, 3, 12, 16, generator=gen).expand(2, -1, -1, -1) for _ in range(2))
    keep = torch.tensor([0, 1, 2, 5, 9])  # e.g. text + foreground
    drop = torch.tensor([3, 4, 6, 7, 8, 10, 11])
    full = reference_attention(q, k, v)[:, :, keep]
    k2, v2 = append_cached(k[:, :, keep], v[:, :, keep], k[:1, :, drop], v[:1, :, drop])
    part = reference_attention(q[:, :, keep], k2, v2)
    assert torch.allclose(part, full, atol=1e-6)
    # with the same batch-1 cache, SDPA (what ComfyUI runs) agrees too
    sdpa = torch.nn.functional.scaled_dot_product_attention(q[:, :, keep], k2, v2)
    assert torch.allclose(sdpa, full, atol=1e-5)


def test_cached_bias_adds_to_cached_columns_only():
    bias = extend_bias(None, 4, 3, 2, 1.5, torch.float32, "cpu")
    assert bias.shape == (1, 1, 1, 5) and bias.flatten().tolist() == [0, 0, 0, 1.5, 1.5]
    assert extend_bias(None, 4, 3, 2, 0.0, torch.float32, "cpu") is None
    existing = torch.zeros(1, 1, 4, 3).masked_fill(torch.eye(4, 3).bool().view(1, 1, 4, 3), float("-inf"))
    ext = extend_bias(existing, 4, 3, 2, 0.5, torch.float32, "cpu")
    assert ext.shape == (1, 1, 4, 5) and torch.equal(ext[..., :3], existing) and (ext[..., 3:] == 0.5).all()
    # the bias shifts attention towards cached keys exactly as adding to the logits does
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 4, 8, generator=gen)
    k, v = (torch.randn(1, 2, 5, 8, generator=gen) for _ in range(2))
    k2, v2 = append_cached(k[:, :, :3], v[:, :, :3], k[:, :, 3:], v[:, :, 3:])
    ref = reference_attention(q, k2, v2, bias)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k2, v2, attn_mask=bias)
    assert torch.allclose(ref, sdpa, atol=1e-5)


def test_mask_guided_pattern():
    fg = torch.tensor([True, False, False, True])
    b = mask_guided_bias(2, fg, 1, torch.float32, "cpu")[0, 0]
    allowed = torch.isfinite(b)
    kinds = ["t", "t", "f", "b", "b", "f", "r"]
    for qi, qk in enumerate(kinds):
        for ki, kk in enumerate(kinds):
            expect = qk in "tr" or kk in "tr" or qk == kk
            assert bool(allowed[qi, ki]) == expect, (qk, kk)


def test_keep_background_4d_and_5d():
    m = torch.zeros(1, 2, 3, dtype=torch.bool)
    m[0, 1, 2] = True
    x, src = torch.ones(1, 4, 2, 3), torch.zeros(1, 4, 2, 3)
    out = keep_background(x, src, m)
    assert out.sum() == 4 and (out[:, :, 1, 2] == 1).all()
    out5 = keep_background(torch.ones(1, 4, 1, 2, 3), torch.zeros(1, 4, 1, 2, 3), m)
    assert out5.sum() == 4


# -- record files ----------------------------------------------------------------------------

def make_record(storage="bf16", steps=3):
    th, tw, h, w = 2, 3, 4, 6
    tmask = torch.zeros(1, th, tw, dtype=torch.bool)
    tmask[0, 0, 1] = True
    lmask = tmask.repeat_interleave(2, 1).repeat_interleave(2, 2)
    n_bg = int((~tmask).sum())
    store = filled_store(storage, steps=steps, shape=(1, 2, n_bg, 8))
    sigmas = torch.linspace(1, 0, steps + 1)
    src = torch.randn(1, 16, h, w)
    fp = {"model": "abc", "latent_shape": [1, 16, h, w], "mask": mask_digest(lmask), "steps": steps,
          "sigmas": sigmas_digest(sigmas)}
    return BackgroundRecord(store=store, trajectory=torch.randn(steps + 1, 1, 16, h, w), source_latent=src,
                            latent_mask=lmask, token_mask=tmask, sigmas=sigmas, fingerprint=fp,
                            kv_shape=(1, 2, n_bg, 8), blocks=BLOCKS, info={"hidden": 16})


@pytest.mark.parametrize("storage", ["bf16", "fp8", "fp32"])
def test_record_file_round_trip(tmp_path, storage):
    rec = make_record(storage)
    path = str(tmp_path / "a.bgkv.safetensors")
    rec.save(path)
    back = BackgroundRecord.load(path)
    assert back.fingerprint == rec.fingerprint and back.store.storage == storage
    assert torch.equal(back.trajectory, rec.trajectory) and torch.equal(back.source_latent, rec.source_latent)
    assert torch.equal(back.latent_mask, rec.latent_mask) and torch.equal(back.token_mask, rec.token_mask)
    for key, e in rec.store.entries.items():
        k1 = rec.store.get(key[0], key[1], "cpu", torch.float32)
        k2 = back.store.get(key[0], key[1], "cpu", torch.float32)
        assert torch.equal(k1[0], k2[0]) and torch.equal(k1[1], k2[1])
    assert rec.mismatches(model="abc", latent_shape=[1, 16, 4, 6], latent_mask=rec.latent_mask, steps=3,
                          sigmas=rec.sigmas) == []


def test_mismatches_name_what_differs():
    rec = make_record()
    other_mask = rec.latent_mask.clone()
    other_mask[0, 0, 0] = True
    got = rec.mismatches(model="xyz", latent_shape=[1, 16, 8, 8], latent_mask=other_mask, steps=5)
    assert [g.split(" ")[0] for g in got] == ["model", "latent", "mask", "step"]


def _rewrite(path, mutate):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    meta = mutate(tensors, meta) or meta
    save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize("case,message", [
    ("unknown", "unexpected tensors|unknown tensors"),
    ("shape", "shape"),
    ("dtype", "expected torch.bfloat16"),
    ("missing", "missing tensor"),
    ("header", "not a valid record"),
    ("format", "not a background key/value record"),
])
def test_invalid_records_are_refused(tmp_path, case, message):
    path = str(tmp_path / "r.bgkv.safetensors")
    make_record().save(path)

    def mutate(t, meta):
        key = next(k for k in t if k.startswith("kv.k."))
        if case == "unknown":
            t["kv.k.99.double.0"] = t[key].clone()
        elif case == "shape":
            t[key] = t[key][:, :, :1].contiguous()
        elif case == "dtype":
            t[key] = t[key].float()
        elif case == "missing":
            del t[key]
        elif case == "header":
            meta = dict(meta, header=json.dumps({"storage": "bf16"}))
        elif case == "format":
            meta = dict(meta, format="something-else")
        return meta

    _rewrite(path, mutate)
    with pytest.raises(RecordError, match=message):
        BackgroundRecord.load(path)


def test_truncated_and_pickle_files_are_refused_without_executing(tmp_path):
    path = tmp_path / "t.bgkv.safetensors"
    make_record().save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordError, match="truncated"):
        BackgroundRecord.load(str(path))

    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.bgkv.safetensors"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(RecordError):
        BackgroundRecord.load(str(bad))
    assert not marker.exists()
    torch.save({"a": torch.zeros(1)}, tmp_path / "torch.bgkv.safetensors")
    with pytest.raises(RecordError):
        BackgroundRecord.load(str(tmp_path / "torch.bgkv.safetensors"))


def test_cached_parts_are_appended_in_order_and_broadcast_over_the_batch():
    from precise_edit.kernels.kv_attention import extra_length

    k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    a, b = torch.randn(1, 3, 2, 8), torch.randn(1, 3, 5, 8)
    k2, v2 = append_cached(k, v, (a, b), [b, a])
    assert torch.equal(k2, torch.cat((k, a.expand(2, -1, -1, -1), b.expand(2, -1, -1, -1)), 2))
    assert torch.equal(v2, torch.cat((v, b.expand(2, -1, -1, -1), a.expand(2, -1, -1, -1)), 2))
    assert extra_length((a, b)) == 7 and extra_length(a) == 2

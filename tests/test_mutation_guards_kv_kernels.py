"""KV-Edit cache and record files: behaviour the mutation run found unguarded (issue 14).
A record's contents decide the edit; a refused file must say what is wrong with it."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from record_files import rewrite_record
from precise_edit.kernels.kv_attention import extend_bias, mask_guided_bias
from precise_edit.kernels.kv_record import BackgroundRecord, RecordError, mask_digest, sigmas_digest
from precise_edit.kernels.kv_store import KVStore

BLOCKS = [("double", 0), ("single", 1)]


def _store(storage="fp32", steps=2, n=5):
    gen = torch.Generator().manual_seed(0)
    store = KVStore(storage=storage)
    for s in range(steps):
        for b in BLOCKS:
            store.put(s, b, torch.randn(1, 2, n, 8, generator=gen), torch.randn(1, 2, n, 8, generator=gen))
    return store


def _record(storage="fp32", steps=2, mask_guided=True):
    tmask = torch.zeros(1, 2, 3, dtype=torch.bool)
    tmask[0, 0, 1] = True
    lmask = tmask.repeat_interleave(2, 1).repeat_interleave(2, 2)
    sigmas = torch.linspace(1, 0, steps + 1)
    fp = {"model": "m", "latent_shape": [1, 16, 4, 6], "mask": mask_digest(lmask), "steps": steps,
          "sigmas": sigmas_digest(sigmas)}
    return BackgroundRecord(store=_store(storage, steps), trajectory=torch.randn(steps + 1, 1, 16, 4, 6),
                            source_latent=torch.randn(1, 16, 4, 6), latent_mask=lmask, token_mask=tmask,
                            sigmas=sigmas, fingerprint=fp, kv_shape=(1, 2, 5, 8), blocks=list(BLOCKS),
                            mask_guided=mask_guided, info={"hidden": 16})


def _names(store):
    return [(key, part) for key in store.use_order() for part in store.entries[key] if part in ("k", "v")]


def test_store_lookup_blocks_and_token_count():
    store = _store()
    assert store.has(1, ("single", 1)) and store.has(0, ("double", 0))
    assert not store.has(2, ("single", 1)) and not store.has(1, ("double", 1)) and not store.has(1, ("single", 0))
    assert store.blocks() == [("double", 0), ("single", 1)]
    assert store.token_count() == 5
    assert KVStore(storage="fp32").token_count() == 0


@pytest.mark.parametrize("storage", ["bf16", "fp8"])
def test_converted_store_keeps_order_contents_and_size(tmp_path, storage):
    store = _store()
    small = store.converted(storage)
    assert _names(small) == _names(store)  # same entries, same order
    assert small.peak_bytes == small.nbytes() > 0
    for key in store.entries:
        a, b = store.get(*key, "cpu", torch.float32), small.get(*key, "cpu", torch.float32)
        assert (a[0] - b[0]).abs().max() < 0.2 and (a[1] - b[1]).abs().max() < 0.2
    same = store.converted()  # same storage: exact copy, not shared
    assert same.peak_bytes == store.nbytes() and _names(same) == _names(store)
    for key, e in store.entries.items():
        assert torch.equal(same.entries[key]["k"], e["k"]) and same.entries[key]["k"] is not e["k"]


def test_converted_record_keeps_what_the_edit_needs():
    rec = _record(mask_guided=True)
    small = rec.converted(storage="bf16")
    assert small.kv_shape == rec.kv_shape and small.blocks == rec.blocks
    assert small.mask_guided is True and small.info == {"hidden": 16}
    assert small.store.storage == "bf16" and rec.store.storage == "fp32"
    assert small.nbytes() == small.store.nbytes() + rec.trajectory.numel() * 4


def test_record_loaded_as_saved_keeps_its_header(tmp_path):
    rec = _record(mask_guided=True)
    path = str(tmp_path / "r.bgkv.safetensors")
    rec.save(path)
    back = BackgroundRecord.load(path)
    assert back.mask_guided is True and back.info == {"hidden": 16} and back.blocks == list(BLOCKS)
    assert back.store.peak_bytes == back.store.nbytes() > 0
    assert _names(back.store) == _names(rec.store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.bgkv.safetensors"]  # no partial file left


def test_record_loaded_with_another_storage_keeps_its_header(tmp_path):
    rec = _record(mask_guided=True)
    path = str(tmp_path / "r.bgkv.safetensors")
    rec.save(path)
    back = BackgroundRecord.load(path, storage="bf16")
    assert back.store.storage == "bf16" and back.mask_guided is True and back.kv_shape == (1, 2, 5, 8)
    assert back.store.peak_bytes == back.store.nbytes()
    assert _names(back.store) == _names(rec.store)


def _broken(tmp_path, change):
    path = str(tmp_path / "r.bgkv.safetensors")
    _record().save(path)
    return rewrite_record(path, change)


@pytest.mark.parametrize("change,message", [
    (lambda t, h: t.pop("trajectory"), r"missing tensor 'trajectory'"),
    (lambda t, h: t.__setitem__("sigmas", t["sigmas"].double()),
     r"tensor 'sigmas' is torch.float64, expected torch.float32"),
    (lambda t, h: t.__setitem__("trajectory", t["trajectory"][:2].contiguous()),
     r"tensor 'trajectory' has shape \[2, 1, 16, 4, 6\], expected \[3, 1, 16, 4, 6\]"),
    (lambda t, h: h.__setitem__("storage", "int3"), r"unknown storage type 'int3'"),
    (lambda t, h: h["fingerprint"].pop("sigmas"), r"fingerprint lacks 'sigmas'"),
    (lambda t, h: h["fingerprint"].__setitem__("latent_shape", [16, 4, 6]),
     r"bad latent shape \[16, 4, 6\] or step count 2"),
    (lambda t, h: h["fingerprint"].__setitem__("steps", 0), r"bad latent shape \[1, 16, 4, 6\] or step count 0"),
    (lambda t, h: h.__setitem__("source_dtype", "no_such_type"), r"bad source latent type"),
    (lambda t, h: h.__setitem__("kv_shape", [1, 2, 4, 8]), r"key/value shape \[1, 2, 4, 8\] does not fit 5"),
    (lambda t, h: h.__setitem__("steps", [0, 2]), r"recorded steps \[0, 2\] outside 0\.\.1"),
])
def test_a_broken_record_file_says_what_is_wrong(tmp_path, change, message):
    with pytest.raises(RecordError, match=message):
        BackgroundRecord.load(_broken(tmp_path, change))


def _broken_fp8(tmp_path, change):
    path = str(tmp_path / "f.bgkv.safetensors")
    _record(storage="fp8").save(path)
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(path)
    change(tensors, meta)
    save_file(tensors, path, metadata=meta)
    return path


@pytest.mark.parametrize("change,message", [
    (lambda t, m: t.__setitem__("kv.ks.0.double.0", t["kv.ks.0.double.0"].double()),
     r"tensor kv\.ks\.0\.double\.0 is torch\.float64, expected torch\.float32 \(fp8\)"),
    (lambda t, m: t.__setitem__("kv.vs.1.single.1", t["kv.vs.1.single.1"].repeat(2)),
     r"tensor kv\.vs\.1\.single\.1 has shape \(2,\), expected \(1,\)"),
    (lambda t, m: t.update({f"kv.k.{i}.double.7": t["kv.k.0.double.0"].clone() for i in range(6)}),
     r"unexpected tensors in the record: \['kv\.k\.0\.double\.7', 'kv\.k\.1\.double\.7', "
     r"'kv\.k\.2\.double\.7', 'kv\.k\.3\.double\.7', 'kv\.k\.4\.double\.7'\]"),
    (lambda t, m: m.__setitem__("format", "other"),
     r"^this safetensors file is not a background key/value record \(saved by BackgroundKVCache\)$"),
    (lambda t, m: m.__setitem__("version", "99"), r"^record format version '99' is not supported \(expected "),
])
def test_a_broken_fp8_record_or_foreign_file_says_what_is_wrong(tmp_path, change, message):
    with pytest.raises(RecordError, match=message):
        BackgroundRecord.load(_broken_fp8(tmp_path, change))


def test_a_truncated_file_names_the_error(tmp_path):
    path = tmp_path / "t.bgkv.safetensors"
    _record().save(str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RecordError, match=r"^cannot read t\.bgkv\.safetensors as a safetensors record \(.*it may be truncated"):
        BackgroundRecord.load(str(path))


def test_a_one_step_record_loads(tmp_path):
    rec = _record(steps=1)
    path = str(tmp_path / "one.bgkv.safetensors")
    rec.save(path)
    assert BackgroundRecord.load(path).steps == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_biases_come_in_the_model_dtype(dtype):
    """ComfyUI's attention adds the mask to logits of the model's dtype: the biases the
    patches build must have it (a float32 mask fails or upcasts a half-precision model)."""
    assert extend_bias(None, 4, 3, 2, 0.5, dtype, "cpu").dtype == dtype
    assert extend_bias(torch.ones(4, 3, dtype=torch.bool), 4, 3, 2, 0.5, dtype, "cpu").dtype == dtype
    assert mask_guided_bias(2, torch.tensor([True, False]), 1, dtype, "cpu").dtype == dtype

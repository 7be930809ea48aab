"""KV records at real size, kernel side: KIVI-style 4/2-bit storage, prefetch order, streamed
record files (written while inverting, read block by block, refused when unfinished or changed)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from precise_edit.kernels import kv_quant
from precise_edit.kernels.kv_disk import DiskRecordError, Layout, RecordWriter, clean_stale_partials
from precise_edit.kernels.kv_record import BackgroundRecord, RecordError
from precise_edit.kernels.kv_store import KVStore, entry_nbytes, use_rank

TESTS = Path(__file__).resolve().parent
BLOCKS = [("double", 0), ("double", 1), ("single", 0), ("single", 1), ("single", 2)]


def kv(shape=(1, 2, 37, 16), seed=0, outlier=True):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(shape, generator=gen)
    if outlier:
        k[..., 3] *= 40  # keys: a few channels of large magnitude (the reason keys go per channel)
    return k, torch.randn(shape, generator=gen) * 2


# -- quantization ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("group", [128, 8])
def test_quantized_round_trip_within_the_stated_bound(bits, group):
    k, v = kv()
    pk, sk, mk = kv_quant.quantize_keys(k, bits, group)
    pv, sv, mv = kv_quant.quantize_values(v, bits, group)
    assert pk.dtype == torch.uint8 and pk.shape[-1] == 16 * bits // 8
    k2 = kv_quant.dequantize_keys(pk, sk, mk, bits, group)
    v2 = kv_quant.dequantize_values(pv, sv, mv, bits)
    bk = kv_quant.error_bound(sk, "k", k.shape, group)
    bv = kv_quant.error_bound(sv, "v", v.shape, group)
    assert ((k2 - k).abs() <= bk * (1 + 1e-5) + 1e-6).all()
    assert ((v2 - v).abs() <= bv * (1 + 1e-5) + 1e-6).all()
    # the bound is tight: codes use the whole range, the error reaches a good share of it
    assert (k2 - k).abs().max() > 0.3 * bk.max()
    # the stored (minimum, scale) of every group covers the group's range: no code is clamped
    g = min(group, 16)
    vg = v.reshape(1, 2, 37, 16 // g, g)
    qmax = (1 << bits) - 1
    assert (mv.float() <= vg.amin(-1)).all()
    assert (mv.float() + qmax * sv.float() >= vg.amax(-1)).all()


def test_keys_are_grouped_per_channel_values_per_token():
    """An outlier channel of the keys must not spoil the other channels (per-channel key
    groups); an outlier token of the values must not spoil the other tokens (per-token)."""
    k, v = kv(outlier=False)
    k[..., 5] *= 1000
    v[:, :, 7] *= 1000
    k2 = kv_quant.dequantize_keys(*kv_quant.quantize_keys(k, 4), 4)
    v2 = kv_quant.dequantize_values(*kv_quant.quantize_values(v, 4), 4)
    others = [c for c in range(16) if c != 5]
    assert (k2 - k)[..., others].abs().max() < 0.5  # range of a normal channel / 15
    rows = [t for t in range(37) if t != 7]
    assert (v2 - v)[:, :, rows].abs().max() < 1.0


def test_size_at_flux_dev_shape():
    """FLUX-dev 1024x1024, 25% mask: 3072 background tokens, 24 heads of 128 channels."""
    shape = (1, 24, 3072, 128)
    bf16 = entry_nbytes("bf16", shape)
    assert entry_nbytes("int4", shape) / bf16 <= 0.27
    assert entry_nbytes("int2", shape) / bf16 <= 0.145
    authors = 2 * 57 * 3072 * 2 * 4096 * 28  # every image token, bf16, 28 steps: 74.8 GiB
    ours = entry_nbytes("int4", shape) * 57 * 28
    assert abs(authors / 2**30 - 74.8) < 0.05 and ours / authors <= 0.20


# -- prefetch order (issue 8 item 11) ---------------------------------------------------------------

class FakeTransfer:
    """Stands in for the CUDA side stream: records which entries are copied ahead and used."""

    def __init__(self, log):
        self.log = log

    def start(self, key, fetch):
        self.log.append(("start", key))
        return fetch()

    def finish(self, key, handle):
        self.log.append(("finish", key))
        return handle

    def discard(self, key, handle):
        self.log.append(("discard", key))


def recorded_like_inversion(storage="fp32", steps=4, shape=(1, 2, 5, 8)):
    store = KVStore(storage=storage)
    gen = torch.Generator().manual_seed(0)
    for s in reversed(range(steps)):  # the inversion records the last step first
        for b in BLOCKS:
            store.put(s, b, torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
    return store


def denoise_reads(store, skip, steps, log, depth=1):
    store.prefetch_depth = depth
    store.transfer_factory = lambda device, host: FakeTransfer(log)
    held = []
    out = {}
    for s in range(skip, steps):
        for b in BLOCKS:
            out[(s, b)] = store.get(s, b, "cpu", torch.float32)
            held.append(len(store.in_flight()))
    return out, held


@pytest.mark.parametrize("source", ["in-process", "file", "streamed"])
def test_prefetch_follows_the_denoising_order(tmp_path, source):
    store = recorded_like_inversion()
    if source != "in-process":
        rec = _record_around(store, steps=4)
        path = str(tmp_path / "p.bgkv.safetensors")
        rec.save(path)
        store = BackgroundRecord.load(path, stream=(source == "streamed")).store
    log = []
    out, held = denoise_reads(store, skip=1, steps=4, log=log)
    order = [(s, b) for s in range(1, 4) for b in BLOCKS]
    started = [k for what, k in log if what == "start"]
    finished = [k for what, k in log if what == "finish"]
    assert started == order[1:]      # always the next block, across step boundaries too
    assert finished == order[1:]     # every copy made ahead is used, the first block of each step included
    assert not [k for what, k in log if what == "discard"]
    assert max(held) <= 1 and store.in_flight() == []
    reference = recorded_like_inversion()
    for key, (k, v) in out.items():
        k0, v0 = reference.get(*key, "cpu", torch.float32)
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_prefetch_depth_and_stale_copies_are_bounded():
    store = recorded_like_inversion()
    log = []
    _, held = denoise_reads(store, skip=0, steps=4, log=log, depth=3)
    assert max(held) == 3
    # a second edit that starts elsewhere drops what the first left in flight
    store.get(2, BLOCKS[0], "cpu", torch.float32)
    store.get(0, BLOCKS[0], "cpu", torch.float32)
    assert len(store.in_flight()) <= 3
    assert all(use_rank(k) > use_rank((0, BLOCKS[0])) for k in store.in_flight())
    store.release()
    assert store.in_flight() == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_prefetch_on_a_side_stream_matches_plain_copies():
    store = recorded_like_inversion("bf16", shape=(1, 4, 300, 64))
    store.prefetch_depth = 2
    ref = recorded_like_inversion("bf16", shape=(1, 4, 300, 64))
    dev = torch.device("cuda")
    for s in range(1, 4):
        for b in BLOCKS:
            k, v = store.get(s, b, dev, torch.bfloat16)
            k0, v0 = ref.get(s, b, "cpu", torch.bfloat16)
            assert torch.equal(k.cpu(), k0) and torch.equal(v.cpu(), v0)
            assert len(store.in_flight()) <= 2
    assert store.in_flight() == []


# -- record files --------------------------------------------------------------------------------

def _record_around(store, steps, shape=(1, 2, 5, 8)):
    import test_kv_kernels as tk

    rec = tk.make_record("fp32", steps=steps)
    rec.store, rec.kv_shape, rec.blocks = store, tuple(shape), BLOCKS
    n_bg = shape[2]
    tmask = torch.zeros(1, 2, 3, dtype=torch.bool)
    tmask.view(-1)[: 6 - n_bg] = True
    rec.token_mask = tmask
    rec.latent_mask = tmask.repeat_interleave(2, 1).repeat_interleave(2, 2)
    from precise_edit.kernels.kv_record import mask_digest

    rec.fingerprint = dict(rec.fingerprint, mask=mask_digest(rec.latent_mask))
    return rec


@pytest.mark.parametrize("storage", ["bf16", "fp8", "int4", "int2"])
def test_streamed_and_memory_records_read_identical_bits(tmp_path, storage):
    rec = _record_around(recorded_like_inversion(storage, shape=(1, 2, 5, 8)), steps=4)
    path = str(tmp_path / "s.bgkv.safetensors")
    rec.save(path)
    disk = BackgroundRecord.load(path, stream=True, depth=2)
    mem = BackgroundRecord.load(path)
    assert disk.place() == "disk" and mem.place() == "cpu" and disk.store.nbytes() == rec.store.nbytes()
    for key in rec.store.use_order():
        a = rec.store.get(*key, "cpu", torch.bfloat16)
        b = disk.store.get(*key, "cpu", torch.bfloat16)
        c = mem.store.get(*key, "cpu", torch.bfloat16)
        assert all(torch.equal(x, y) for x, y in zip(a + a, b + c))
    assert disk.store.bytes_read == rec.store.nbytes()


def test_changed_file_is_refused(tmp_path):
    rec = _record_around(recorded_like_inversion("bf16"), steps=4)
    path = tmp_path / "c.bgkv.safetensors"
    rec.save(str(path))
    disk = BackgroundRecord.load(str(path), stream=True)
    _, _, a, b = disk.store.rf.tensors["kv.v.2.single.1"]
    data = bytearray(path.read_bytes())
    data[disk.store.rf.data_start + a + 3] ^= 0x10  # one bit of one value, same size
    path.write_bytes(bytes(data))
    with pytest.raises(RecordError, match="changed after it was written"):
        BackgroundRecord.load(str(path))
    fresh = BackgroundRecord.load(str(path), stream=True)  # streaming: refused at the entry
    fresh.store.get(2, ("single", 0), "cpu", torch.float32)
    with pytest.raises(DiskRecordError, match=r"changed after it was written \(kv.2.single.1"):
        fresh.store.get(2, ("single", 1), "cpu", torch.float32)
    # the record opened before the change notices it before an edit starts
    with pytest.raises(DiskRecordError, match="changed or replaced"):
        disk.store.begin()


def test_vanished_file_is_a_clear_error(tmp_path):
    rec = _record_around(recorded_like_inversion("bf16"), steps=4)
    path = tmp_path / "v.bgkv.safetensors"
    rec.save(str(path))
    disk = BackgroundRecord.load(str(path), stream=True)
    path.unlink()
    with pytest.raises(DiskRecordError, match="no longer exists"):
        disk.store.begin()
    with pytest.raises(RecordError, match="does not exist"):
        BackgroundRecord.load(str(path), stream=True)


WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import conftest, torch
from precise_edit.kernels.kv_disk import Layout, RecordWriter
shape = (1, 2, 64, 32)
keys = [(s, ("double", b)) for s in range(50) for b in range(4)]
layout = Layout.build([("x", torch.float32, (4,))], "bf16", shape, keys)
w = RecordWriter(sys.argv[1], layout, {"format": "comfyui-precise-edit/background-kv", "version": "2",
                                       "header": "{}"})
for i, (s, b) in enumerate(reversed(keys)):
    w.put(s, b, torch.randn(shape), torch.randn(shape), "bf16")
    if i == 20:
        print("writing", flush=True)
    time.sleep(0.05)
w.put_tensor("x", torch.zeros(4))
w.finish()
print("finished", flush=True)
"""


def test_record_killed_while_written_is_never_offered_or_loaded(tmp_path):
    path = tmp_path / "k.bgkv.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(TESTS)], stdout=subprocess.PIPE,
                            env=dict(os.environ))
    assert proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = Path(str(path) + ".partial")
    assert partial.exists() and not path.exists()
    assert not list(tmp_path.glob("*.bgkv.safetensors"))  # what LoadBackgroundKV lists
    with pytest.raises(RecordError, match="not finished"):
        BackgroundRecord.load(str(partial))
    renamed = tmp_path / "renamed.bgkv.safetensors"
    os.link(partial, renamed)  # even under a record's name
    with pytest.raises(RecordError, match="not finished"):
        BackgroundRecord.load(str(renamed), stream=True)
    assert clean_stale_partials(str(tmp_path)) == [str(partial)] and not partial.exists()


def test_a_partial_being_written_is_not_cleaned(tmp_path):
    keys = [(0, ("double", 0))]
    layout = Layout.build([], "bf16", (1, 1, 2, 4), keys)
    w = RecordWriter(str(tmp_path / "w.bgkv.safetensors"), layout, {"format": "x", "version": "2", "header": "{}"})
    assert clean_stale_partials(str(tmp_path)) == []
    w.abort()
    assert not list(tmp_path.iterdir())


def test_not_enough_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    layout = Layout.build([], "bf16", (1, 24, 3072, 128), [(s, ("double", 0)) for s in range(28)])
    with pytest.raises(DiskRecordError, match=r"needs 0\.\d+ GiB on disk in .* but only 0\.00 GiB are free"):
        RecordWriter(str(tmp_path / "n.bgkv.safetensors"), layout, {"format": "x", "version": "2", "header": "{}"})
    assert not list(tmp_path.iterdir())

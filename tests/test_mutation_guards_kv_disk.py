"""Streamed KV record files (kernels/kv_disk.py, kernels/kv_disk_read.py): behaviour the
mutation run found unguarded (issue 14). A record written while inverting must be a valid
safetensors file laid out in reading order; a file that is damaged, unfinished or changed
must be refused with a message saying so; a streamed edit must read the same bits."""
import errno
import json
import os
import struct
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from precise_edit.kernels import kv_disk
from precise_edit.kernels.kv_disk import (DiskRecordError, Layout, RecordWriter, check_space, checked_names,
                                          clean_stale_partials, record_bytes)
from precise_edit.kernels.kv_disk_read import DiskKVStore, RecordFile, entry_ranges
from precise_edit.kernels.kv_store import KVStore, KVStoreError, encode, entry_nbytes

SHAPE = (1, 2, 3, 8)
BLOCKS = [("double", 0), ("single", 0), ("single", 1)]
META = {"format": "test", "version": "2", "header": "{}"}


def kv(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)


def keys(steps=2):
    return [(s, b) for s in range(steps) for b in BLOCKS]


def write(path, storage="int4", steps=2, small=(("x", torch.float32, (3,)),), order=None):
    layout = Layout.build(list(small), storage, SHAPE, keys(steps))
    w = RecordWriter(str(path), layout, META, depth=2)
    for s, b in order or reversed(keys(steps)):
        w.put(s, b, *kv(s * 10 + b[1] + (5 if b[0] == "single" else 0)), storage)
    for name, dtype, shape in small:
        w.put_tensor(name, torch.arange(int(torch.tensor(shape).prod())).reshape(shape).to(dtype))
    w.finish()
    return layout


def open_store(path, storage="int4", steps=2, depth=2):
    rf = RecordFile(str(path))
    return DiskKVStore(rf, storage, SHAPE, entry_ranges(rf, storage, SHAPE, keys(steps)), depth=depth)


def expected(storage, s, b):
    mem = KVStore(storage=storage)
    mem.put(s, b, *kv(s * 10 + b[1] + (5 if b[0] == "single" else 0)))
    return mem.get(s, b, "cpu", torch.float32)


# -- layout and writing ------------------------------------------------------------------------

def test_the_layout_lies_in_reading_order_without_gaps():
    layout = Layout.build([("a", torch.float32, (2, 3)), ("b", torch.uint8, (5,))], "fp8", SHAPE,
                          [(1, ("single", 0)), (0, ("single", 0)), (1, ("double", 0)), (0, ("double", 0))])
    assert list(layout.tensors)[:2] == ["a", "b"] and layout.tensors["a"][2:] == (0, 24)
    assert layout.tensors["b"][2:] == (24, 29)
    assert list(layout.entries) == [(0, ("double", 0)), (0, ("single", 0)), (1, ("double", 0)), (1, ("single", 0))]
    size = entry_nbytes("fp8", SHAPE)
    for i, (key, (a, b, names)) in enumerate(layout.entries.items()):
        assert (a, b) == (29 + i * size, 29 + (i + 1) * size)
        assert [p for p, _ in names] == ["k", "v", "ks", "vs"]
    assert layout.data_bytes == 29 + 4 * size and layout.max_entry == size
    assert Layout.build([], "bf16", SHAPE, []).max_entry == 0
    assert checked_names(layout) == ["kv.0.double.0", "kv.0.single.0", "kv.1.double.0", "kv.1.single.0", "a", "b"]
    head = json.loads(layout.header_json({"m": "1"}))
    assert head["__metadata__"] == {"m": "1"}
    assert head["kv.ks.0.double.0"] == {"dtype": "F32", "shape": [1], "data_offsets": [29 + 2 * 48, 29 + 2 * 48 + 4]}
    assert head["kv.k.0.double.0"]["dtype"] == "F8_E4M3" and head["b"]["dtype"] == "U8"


@pytest.mark.parametrize("storage", ["int4", "fp8", "bf16"])
def test_a_written_record_is_a_safetensors_file_of_its_stated_size(tmp_path, storage):
    path = tmp_path / "w.bgkv.safetensors"
    layout = write(path, storage)
    assert os.path.getsize(path) == record_bytes(layout, META)
    with safe_open(str(path), framework="pt") as f:  # any safetensors reader opens it
        meta = f.metadata()
    assert meta["complete"] == "1" and meta["format"] == "test"
    assert sorted(json.loads(meta["checksums"])) == sorted(checked_names(layout))
    tensors = load_file(str(path))
    assert torch.equal(tensors["x"], torch.arange(3).float())
    parts = encode(*kv(0 * 10 + 0), storage)
    for p, t in parts.items():
        assert torch.equal(tensors[f"kv.{p}.0.double.0"].view(torch.uint8), t.view(torch.uint8)), p


def test_writing_refuses_what_does_not_fit_the_layout(tmp_path):
    path = tmp_path / "r.bgkv.safetensors"
    layout = Layout.build([("x", torch.float32, (3,))], "bf16", SHAPE, keys(1))
    w = RecordWriter(str(path), layout, META)
    with pytest.raises(DiskRecordError) as e:
        w.put(5, ("double", 0), *kv(0), "bf16")
    assert str(e.value) == "step 5, double block 0 is not in the record's layout"
    with pytest.raises(DiskRecordError) as e:
        w.put_parts((0, ("double", 0)), encode(*kv(0), "fp32"))
    assert str(e.value) == "keys/values of 0.double.0 do not fit the record's layout"
    with pytest.raises(DiskRecordError) as e:
        w.put_tensor("x", torch.zeros(4))
    assert str(e.value) == ("tensor x is torch.float32 (4,), the layout says torch.float32 (3,)")
    with pytest.raises(DiskRecordError, match=r"tensor x is torch\.float64 \(3,\)"):
        w.put_tensor("x", torch.zeros(3, dtype=torch.float64))
    w.put(0, ("double", 0), *kv(0), "bf16")
    with pytest.raises(DiskRecordError) as e:
        w.finish()
    assert str(e.value) == "the record lacks 3 tensors (e.g. kv.0.single.0); it was not finished"
    assert list(tmp_path.iterdir()) == []


def _write_while_pwrite_fails(w, n, err, monkeypatch) -> Exception:
    """Write ``n`` blocks and finish with every ``os.pwrite`` raising ``OSError(err)``; the error raised."""
    def failing(*a):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "pwrite", failing)
    try:
        for s, b in keys(n):
            w.put(s, b, *kv(0), "bf16")
        w.finish()
    except Exception as e:  # noqa: BLE001 -- the caller checks which error it is
        return e
    finally:
        monkeypatch.undo()
    raise AssertionError("the write did not fail")


def test_a_full_disk_while_writing_is_named_and_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bgkv.safetensors"
    w = RecordWriter(str(path), Layout.build([], "bf16", SHAPE, keys(2)), META, depth=1)
    e = _write_while_pwrite_fails(w, 2, errno.ENOSPC, monkeypatch)
    assert isinstance(e, DiskRecordError) and str(e) == f"the disk holding {path}.partial is full"
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_without_fallocate_still_gets_a_record(tmp_path, monkeypatch):
    def unsupported(fd, off, n):
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    path = tmp_path / "t.bgkv.safetensors"
    layout = write(path, "bf16")
    assert os.path.getsize(path) == record_bytes(layout, META)
    store = open_store(path, "bf16")
    k, v = store.get(1, ("single", 1), "cpu", torch.float32)
    assert torch.equal(k, expected("bf16", 1, ("single", 1))[0])
    store.release()


def test_no_room_for_the_file_is_refused_before_writing(tmp_path, monkeypatch):
    def no_room(fd, off, n):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    layout = Layout.build([], "bf16", SHAPE, keys(1))
    with pytest.raises(DiskRecordError, match=r"^the record needs 0\.00 GiB on disk in .*, which is not free$"):
        RecordWriter(str(tmp_path / "n.bgkv.safetensors"), layout, META)
    assert list(tmp_path.iterdir()) == []


def test_free_space_keeps_a_margin(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**40, 0, 2**30))
    check_space(str(tmp_path), 2**30 - 256 * 2**20)  # exactly the margin left
    with pytest.raises(DiskRecordError) as e:
        check_space(str(tmp_path), 2**30 - 256 * 2**20 + 1)
    assert str(e.value) == f"the record needs 0.75 GiB on disk in {tmp_path} but only 1.00 GiB are free"
    check_space(str(tmp_path / "new" / "folder"), 10)
    assert (tmp_path / "new" / "folder").is_dir()


def test_only_our_abandoned_partials_are_removed(tmp_path):
    assert clean_stale_partials(str(tmp_path / "missing")) == []
    ours = tmp_path / "a.bgkv.safetensors.partial"
    other = tmp_path / "video.mp4.partial"
    ours.write_bytes(b"x")
    other.write_bytes(b"y")
    (tmp_path / "b.bgkv.safetensors.partial").mkdir()  # a folder of that name is not ours to remove
    assert clean_stale_partials(str(tmp_path)) == [str(ours)]
    assert not ours.exists() and other.exists() and (tmp_path / "b.bgkv.safetensors.partial").is_dir()


# -- reading -------------------------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["int4", "fp8", "bf16"])
def test_streamed_entries_read_the_bits_written_in_any_order(tmp_path, storage):
    path = tmp_path / "s.bgkv.safetensors"
    write(path, storage)
    store = open_store(path, storage)
    assert store.path == str(path) and store.token_count() == 3
    assert store.steps() == [0, 1] and store.blocks() == sorted(BLOCKS)
    assert store.has(1, ["single", 1]) and not store.has(2, ("single", 1))
    assert store.nbytes() == 6 * entry_nbytes(storage, SHAPE) and store.entry_bytes() == entry_nbytes(storage, SHAPE)
    # out of order (an edit that starts at step 1, then a second edit from step 0)
    for key in [(1, ("single", 0)), (1, ("single", 1))] + keys(2):
        k, v = store.get(*key, "cpu", torch.float32)
        k0, v0 = expected(storage, *key)
        assert torch.equal(k, k0) and torch.equal(v, v0), key
    assert store.bytes_read == 8 * entry_nbytes(storage, SHAPE)
    store.release()
    mem = store.converted()
    assert isinstance(mem, KVStore) and mem.storage == storage and mem.nbytes() == store.nbytes()
    assert mem.use_order() == sorted(mem.keys(), key=lambda k: (k[0], k[1][0] != "double", k[1]))
    assert torch.equal(mem.get(0, ("single", 1), "cpu", torch.float32)[1], expected(storage, 0, ("single", 1))[1])
    small = store.converted("int2")
    assert small.storage == "int2" and small.nbytes() == 6 * entry_nbytes("int2", SHAPE)


def test_keys_and_values_read_are_not_overwritten_by_later_reads(tmp_path):
    """The read buffers are reused: what an edit holds must not change when the next entries arrive."""
    path = tmp_path / "b.bgkv.safetensors"
    write(path, "fp32")
    store = open_store(path, "fp32", depth=1)
    held = [store.get(*key, "cpu", torch.float32) for key in keys(2)]
    for key, (k, v) in zip(keys(2), held):
        k0, v0 = expected("fp32", *key)
        assert torch.equal(k, k0) and torch.equal(v, v0), key
    assert store.peak_bytes == entry_nbytes("fp32", SHAPE)
    store.release()


def test_a_damaged_entry_is_refused_when_the_edit_reaches_it(tmp_path):
    path = tmp_path / "d.bgkv.safetensors"
    write(path, "bf16")
    rf = RecordFile(str(path))
    a = rf.tensors["kv.v.1.double.0"][2]
    with open(path, "r+b") as f:
        f.seek(rf.data_start + a)
        byte = f.read(1)
        f.seek(rf.data_start + a)
        f.write(bytes([byte[0] ^ 0x01]))
    store = open_store(path, "bf16")
    store.get(0, ("double", 0), "cpu", torch.float32)
    with pytest.raises(DiskRecordError) as e:
        for key in keys(2)[1:]:
            store.get(*key, "cpu", torch.float32)
    assert str(e.value) == ("the record file d.bgkv.safetensors changed after it was written "
                            "(kv.1.double.0 does not match its checksum); invert again")
    with pytest.raises(DiskRecordError, match="kv.1.double.0 does not match its checksum"):
        rf.read_entry((1, ("double", 0)), entry_ranges(rf, "bf16", SHAPE, keys(2))[(1, ("double", 0))])


def test_a_record_file_shortened_after_opening_ends_early(tmp_path):
    path = tmp_path / "e.bgkv.safetensors"
    write(path, "bf16")
    store = open_store(path, "bf16")
    os.truncate(path, os.path.getsize(path) - 10)
    with pytest.raises(DiskRecordError) as e:
        for key in keys(2):
            store.get(*key, "cpu", torch.float32)
    assert str(e.value) == f"the record file {path} ended early (changed after writing?)"
    with pytest.raises(DiskRecordError, match="was changed or replaced after it was opened; load it again"):
        store.begin()


def test_a_scratch_record_is_deleted_when_closed(tmp_path):
    path = tmp_path / "c.bgkv.safetensors"
    write(path, "bf16")
    rf = RecordFile(str(path))
    rf.close()
    assert path.exists()
    rf = RecordFile(str(path))
    rf.delete_on_close = True
    rf.close()
    assert not path.exists() and rf.fd is None
    rf.close()  # twice: nothing left to do


def _bytes_with_header(head: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(head).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("content,message", [
    (b"1234", "cannot read {n} as a safetensors record: the file is truncated"),
    (struct.pack("<Q", 1000) + b"{}", "cannot read {n} as a safetensors record (header length 1000 does not fit a "
                                      "10-byte file); it may be truncated or another kind of file"),
    (struct.pack("<Q", 3) + b"\xff\xfe{", "cannot read {n} as a safetensors record (bad header); it may be truncated "
                                          "or another kind of file"),
    (struct.pack("<Q", 2) + b"[]", "cannot read {n} as a safetensors record (bad header)"),
    (_bytes_with_header({"t": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"x"),
     "{n}: tensor 't' has a malformed or unsupported header entry"),
    (_bytes_with_header({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"xxxx"),
     "{n}: tensor 't' has offsets that do not fit its shape"),
    (_bytes_with_header({"t": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, b"xxx"),
     "{n}: tensors overlap or leave gaps; not a valid safetensors file"),
    (_bytes_with_header({"t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"xxx"),
     "cannot read {n} as a safetensors record: the file has {size} bytes, its header describes {less}; it may "
     "be truncated or was changed after writing"),
])
def test_files_that_are_not_records_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "bad.bgkv.safetensors"
    path.write_bytes(content)
    fds = set(os.listdir("/proc/self/fd"))
    with pytest.raises(DiskRecordError) as e:
        RecordFile(str(path))
    size = len(content)
    assert str(e.value) == message.format(n="bad.bgkv.safetensors", size=size, less=size - 1)
    assert set(os.listdir("/proc/self/fd")) <= fds  # the refused file is closed again


def test_a_header_at_its_size_limit(tmp_path, monkeypatch):
    path = tmp_path / "h.bgkv.safetensors"
    write(path, "bf16")
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    monkeypatch.setattr(RecordFile, "MAX_HEADER", n)
    RecordFile(str(path)).close()
    monkeypatch.setattr(RecordFile, "MAX_HEADER", n - 1)
    with pytest.raises(DiskRecordError, match=f"header length {n} does not fit"):
        RecordFile(str(path))


def test_entries_are_checked_against_the_layout(tmp_path):
    path = tmp_path / "l.bgkv.safetensors"
    write(path, "int4")
    rf = RecordFile(str(path))
    with pytest.raises(KVStoreError) as e:
        entry_ranges(rf, "int4", SHAPE, keys(3))
    assert str(e.value) == "missing tensor kv.k.2.double.0"
    with pytest.raises(KVStoreError) as e:
        entry_ranges(rf, "bf16", SHAPE, keys(2))
    assert str(e.value) == "tensor kv.k.0.double.0 is torch.uint8, expected torch.bfloat16 (bf16)"
    with pytest.raises(KVStoreError) as e:
        entry_ranges(rf, "int4", (1, 2, 4, 8), keys(2))
    assert str(e.value) == "tensor kv.k.0.double.0 has shape (1, 2, 3, 4), expected (1, 2, 4, 4)"
    ranges = entry_ranges(rf, "int4", SHAPE, keys(2))
    start, end, names = ranges[(0, ("double", 0))]
    assert (start, end) == (12, 12 + entry_nbytes("int4", SHAPE))
    assert names == [(p, f"kv.{p}.0.double.0") for p in ("k", "v", "ks", "km", "vs", "vm")]
    rf.close()


def test_parts_apart_are_read_one_by_one_only_from_files_without_checksums(tmp_path):
    """Version-1 files (no checksums) may hold an entry's parts apart; a checksummed file whose
    parts are apart was rewritten after writing."""
    from safetensors.torch import save_file

    path = tmp_path / "v1.bgkv.safetensors"
    write(path, "fp8", steps=1)
    tensors = load_file(str(path))
    # safetensors' own writer puts the float32 scales before the float8 codes: parts apart
    save_file(tensors, str(path), metadata={"format": "test", "version": "1"})
    rf = RecordFile(str(path))
    ranges = entry_ranges(rf, "fp8", SHAPE, keys(1))
    assert all(r[0] is None for r in ranges.values())
    parts = rf.read_entry((0, ("single", 1)), ranges[(0, ("single", 1))])
    assert [p for p in parts] == ["k", "v", "ks", "vs"]
    assert torch.equal(parts["ks"], tensors["kv.ks.0.single.1"])
    rf.checksums = {}
    with pytest.raises(DiskRecordError, match=r"^the record file v1\.bgkv\.safetensors changed after it was "
                                              r"written \(its layout was rewritten\); invert again$"):
        rf.read_entry((0, ("single", 1)), ranges[(0, ("single", 1))])
    rf.close()


def test_an_edit_reuses_a_few_read_buffers(tmp_path, monkeypatch):
    """No allocation per block (the heap would fragment over a long edit): the reader reads
    into buffers it takes back once the keys/values are decoded."""
    path = tmp_path / "r.bgkv.safetensors"
    write(path, "int4", steps=4)
    store = open_store(path, "int4", steps=4, depth=1)
    size = store.entry_bytes()
    made = []
    empty = torch.empty

    def counting(*shape, **kw):
        if kw.get("dtype") == torch.uint8 and shape in ((size,), (int(size),)):
            made.append(1)
        return empty(*shape, **kw)

    monkeypatch.setattr(torch, "empty", counting)
    for _ in range(2):  # two edits
        for key in keys(4):
            store.get(*key, "cpu", torch.float32)
    store.release()
    monkeypatch.undo()
    assert 1 <= len(made) <= 8  # 24 when every block allocates its own (slack: thread timing under load)


def test_reading_a_changed_file_into_memory_is_refused(tmp_path):
    path = tmp_path / "m.bgkv.safetensors"
    write(path, "bf16")
    store = open_store(path, "bf16")
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(DiskRecordError, match="was changed or replaced after it was opened; load it again"):
        store.converted()


def test_a_refused_file_never_closes_a_descriptor_it_no_longer_owns(tmp_path):
    """A refused RecordFile closed its descriptor, then closed the same number again when it was
    garbage collected: by then the number belonged to another open file (found via a flaky
    mutation run, where a later test's record file lost its descriptor)."""
    import gc

    bad = tmp_path / "bad.bgkv.safetensors"
    bad.write_bytes(b"1234")
    other = tmp_path / "other.bin"
    other.write_bytes(b"keep me")
    with pytest.raises(DiskRecordError) as refused:  # its traceback keeps the refused object alive
        RecordFile(str(bad))
    fd = os.open(str(other), os.O_RDONLY)  # the lowest free number: the one the refused file had
    try:
        del refused
        gc.collect()
        assert os.pread(fd, 7, 0) == b"keep me"
    finally:
        os.close(fd)


def _slow_disk(monkeypatch, seconds=0.01):
    real = os.pwrite

    def slow(fd, data, off):
        time.sleep(seconds)
        return real(fd, data, off)

    monkeypatch.setattr(os, "pwrite", slow)


@pytest.mark.parametrize("depth", [1, 2])
def test_writing_uses_at_most_depth_staging_buffers_of_one_entry(tmp_path, monkeypatch, depth):
    """The memory limit decides ``depth``: while the disk is slower than the model, at most
    ``depth`` staging buffers, each the size of one entry, and no new one per entry."""
    _slow_disk(monkeypatch)
    layout = Layout.build([], "bf16", SHAPE, keys(4))
    w = RecordWriter(str(tmp_path / "b.bgkv.safetensors"), layout, META, depth=depth)
    seen = {}
    take = w._buffer

    def staging(nbytes, pin):
        buf = take(nbytes, pin)
        seen[buf.data_ptr()] = buf
        return buf

    w._buffer = staging
    for s, b in reversed(keys(4)):
        w.put(s, b, *kv(s), "bf16")
    w.finish()
    assert len(seen) == depth
    assert all(b.numel() == layout.max_entry for b in seen.values())


def test_abort_stops_the_writer_closes_the_file_and_can_be_repeated(tmp_path, monkeypatch):
    _slow_disk(monkeypatch, 0.02)
    fds = set(os.listdir("/proc/self/fd"))
    layout = Layout.build([], "bf16", SHAPE, keys(2))
    w = RecordWriter(str(tmp_path / "a.bgkv.safetensors"), layout, META, depth=4)
    assert w._thread.daemon  # a writer left running never keeps Python (ComfyUI) from exiting
    for s, b in keys(2)[:4]:
        w.put(s, b, *kv(s), "bf16")
    w.abort()
    assert not w._thread.is_alive()       # nothing writes into the file any more
    assert set(os.listdir("/proc/self/fd")) <= fds and list(tmp_path.iterdir()) == []
    w.abort()


def test_a_streamed_store_read_into_memory_on_a_device(tmp_path):
    path = tmp_path / "g.bgkv.safetensors"
    write(path, "bf16")
    store = open_store(path, "bf16")
    mem = store.converted(device="meta")  # any device: the compute device
    assert mem.device.type == "meta" and mem.entries[(0, ("double", 0))]["k"].device.type == "meta"
    cpu = store.converted()
    assert cpu.peak_bytes == cpu.nbytes() == store.nbytes()
    empty = DiskKVStore(store.rf, "bf16", (1, 2, 0, 8), {})  # a record without background tokens
    assert empty.token_count() == 0 and empty.entry_bytes() == 0 and empty.nbytes() == 0


def test_a_record_of_flux_dev_blocks_at_50_steps_finishes(tmp_path):
    """57 blocks x 50 steps = 2850 entries: the final checksums must fit the room the
    placeholder header left (compact JSON, as the placeholder)."""
    many = [(s, ("double" if b < 19 else "single", b)) for s in range(50) for b in range(57)]
    layout = Layout.build([], "bf16", (1, 1, 1, 2), many)
    path = tmp_path / "big.bgkv.safetensors"
    w = RecordWriter(str(path), layout, META, depth=8)
    one = encode(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2), "bf16")
    for key in many:
        w.put_parts(key, one)
    w.finish()
    w.abort()  # after finishing: nothing to undo, the record stays
    rf = RecordFile(str(path))
    assert len(rf.checksums) == 2850 and path.exists()
    rf.close()


def test_fp8_scales_after_an_odd_number_of_codes_are_read(tmp_path):
    """3 fp8 keys + 3 values put the float32 scales at byte 6 of the entry: not aligned for a
    float32 view, so they are copied out (read back the same)."""
    shape, ks = (1, 1, 3, 1), [(0, ("double", 0)), (1, ("double", 0))]
    layout = Layout.build([], "fp8", shape, ks)
    path = tmp_path / "o.bgkv.safetensors"
    w = RecordWriter(str(path), layout, META)
    mem = KVStore(storage="fp8")
    for i, (s, b) in enumerate(ks):
        k, v = torch.tensor([1.0, -2.0, 3.0]).view(shape) * (i + 1), torch.tensor([0.5, 0.25, -4.0]).view(shape)
        w.put(s, b, k, v, "fp8")
        mem.put(s, b, k, v)
    w.finish()
    rf = RecordFile(str(path))
    store = DiskKVStore(rf, "fp8", shape, entry_ranges(rf, "fp8", shape, ks))
    for key in ks:
        assert all(torch.equal(a, b) for a, b in zip(store.get(*key, "cpu", torch.float32),
                                                      mem.get(*key, "cpu", torch.float32)))
    store.release()


def test_a_record_being_written_is_refused_as_unfinished(tmp_path):
    """What a killed inversion leaves: the placeholder header, written first."""
    import shutil as sh

    from precise_edit.kernels.kv_record import FORMAT, VERSION, BackgroundRecord, RecordError

    layout = Layout.build([], "bf16", SHAPE, keys(1))
    path = tmp_path / "u.bgkv.safetensors"
    w = RecordWriter(str(path), layout, {"format": FORMAT, "version": VERSION, "header": "{}"})
    w.put(0, ("double", 0), *kv(0), "bf16")
    copy = tmp_path / "copy.bgkv.safetensors"
    sh.copyfile(str(path) + ".partial", copy)
    w.abort()
    with pytest.raises(RecordError) as e:
        BackgroundRecord.load(str(copy))
    assert str(e.value) == ("copy.bgkv.safetensors was not finished (the inversion writing it was interrupted); "
                            "invert again")


def test_a_written_record_is_aligned_and_readable_by_others(tmp_path):
    path = tmp_path / "a.bgkv.safetensors"
    write(path, "bf16")
    rf = RecordFile(str(path))
    assert rf.data_start % 8 == 0  # safetensors pads its header so that the data is 8-byte aligned
    rf.close()
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o644 & ~umask


def test_short_writes_are_continued(tmp_path, monkeypatch):
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, off: real(fd, bytes(data[:7]), off))
    path = tmp_path / "s.bgkv.safetensors"
    write(path, "int4")
    monkeypatch.undo()
    store = open_store(path, "int4")
    for key in keys(2):
        assert all(torch.equal(a, b) for a, b in zip(store.get(*key, "cpu", torch.float32), expected("int4", *key)))
    store.release()


def test_a_write_error_other_than_a_full_disk_keeps_its_own_message(tmp_path, monkeypatch):
    w = RecordWriter(str(tmp_path / "e.bgkv.safetensors"), Layout.build([], "bf16", SHAPE, keys(1)), META)
    e = _write_while_pwrite_fails(w, 1, errno.EIO, monkeypatch)
    assert isinstance(e, OSError) and not isinstance(e, DiskRecordError) and e.errno == errno.EIO
    w.abort()


def test_no_room_names_the_size_in_gib(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**50, 0, 2**50))

    def no_room(fd, off, n):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    layout = Layout.build([], "bf16", (1, 24, 3072, 128), [(s, ("double", 0)) for s in range(28)])
    with pytest.raises(DiskRecordError, match=r"^the record needs 0\.98 GiB on disk in .*, which is not free$"):
        RecordWriter(str(tmp_path / "n.bgkv.safetensors"), layout, META)


def test_a_streamed_store_starts_empty_and_its_reader_never_blocks_exit(tmp_path):
    path = tmp_path / "x.bgkv.safetensors"
    write(path, "bf16")
    store = open_store(path, "bf16")
    assert store.peak_bytes == 0 and store.bytes_read == 0 and store.wait_s == 0.0
    store.get(0, ("double", 0), "cpu", torch.float32)
    assert store._thread.daemon  # a reader left running never keeps Python (ComfyUI) from exiting
    assert 0 < store.wait_s < 60 and store.bytes_read == entry_nbytes("bf16", SHAPE)
    store.release()

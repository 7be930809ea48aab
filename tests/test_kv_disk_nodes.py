"""KV-Edit at real size, node side: where the record lives (auto / CPU / disk), bit-identical
edits from disk and memory, flat peak memory with a disk record, and the bad-input messages."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.kv_edit import engine as ke
from precise_edit.nodes.kv_edit.nodes import BackgroundKVCache, KVInvert, LoadBackgroundKV

from test_kv_edit import edit, pixel_mask, source_latent, src_cond

pytestmark = pytest.mark.usefixtures("comfy_dirs")  # conftest.py

HELPERS = Path(__file__).resolve().parent / "comfy_test_helpers"


def invert(model, place, folder="", storage="bf16", limit=0.0, steps=6, mask="irregular"):
    out = KVInvert.execute(model, source_latent(), pixel_mask(mask), src_cond(), steps, False, storage, place, 0,
                           "touched", limit, str(folder))
    return out.args[0], out.ui["text"][0]


@pytest.mark.parametrize("storage", ["bf16", "int4"])
def test_disk_and_memory_records_give_bit_identical_edits(flux, tmp_path, storage):
    mem, _ = invert(flux, "cpu", storage=storage)
    disk, text = invert(flux, "disk", tmp_path / "rec", storage=storage)
    assert mem.place() == "cpu" and disk.place() == "disk"
    assert "on disk, streamed from" in text and "record place: asked for disk" in text
    files = list((tmp_path / "rec").iterdir())
    assert [f.name.endswith(".bgkv.safetensors") for f in files] == [True]  # finished, no .partial left
    for skip in (1, 3):
        assert torch.equal(edit(flux, mem, skip=skip), edit(flux, disk, skip=skip))
    assert disk.store.bytes_read > 0 and disk.store.in_flight() == []


def test_auto_chooses_disk_when_the_record_exceeds_the_memory_limit(flux, tmp_path):
    small, text = invert(flux, "auto", tmp_path, limit=1.0)
    assert small.place() == "cpu" and "auto: the record" in text and "fits in the memory limit of 1 GiB" in text
    entry = small.store.nbytes() // len(small.store.entries)
    limit = 3 * entry / 2**30  # room for three blocks, not for the record
    big, text = invert(flux, "auto", tmp_path, limit=limit)
    assert big.place() == "disk" and "is more than the memory limit" in text and "3 blocks at a time" in text
    assert torch.equal(edit(flux, small), edit(flux, big))


def test_memory_limit_below_one_block_is_refused(flux, tmp_path):
    with pytest.raises(NodeInputError, match=r"^KVInvert: memory_limit_gb .* is below what one block of this "
                                             r"record needs \(.* KiB|MiB"):
        invert(flux, "auto", tmp_path, limit=1e-9)


def test_not_enough_disk_is_refused_before_inversion(flux, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**30, 2**30 - 4096, 4096))
    monkeypatch.setattr(ke, "_guider", lambda *a: pytest.fail("the inversion started"))
    folder = tmp_path / "small_disk"
    with pytest.raises(NodeInputError, match=rf"^KVInvert: the record needs \d+\.\d\d GiB on disk in "
                                             rf"{folder} but only 0\.00 GiB are free"):
        invert(flux, "disk", folder)
    assert list(folder.iterdir()) == []


def test_vanished_or_changed_disk_record_is_a_clear_error(flux, tmp_path):
    rec, _ = invert(flux, "disk", tmp_path)
    path = Path(rec.store.path)
    data = path.read_bytes()
    path.unlink()
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: the record file .* no longer exists"):
        edit(flux, rec)
    path.write_bytes(data[:-8] + bytes(8))  # same size, last bytes (a key/value entry) changed
    from precise_edit.kernels.kv_record import BackgroundRecord

    reopened = BackgroundRecord.load(str(path), stream=True)
    with pytest.raises(NodeInputError, match=r"^KVEditSampler: the record file .* changed after it was written"):
        edit(flux, reopened)


def test_interrupted_inversion_leaves_no_record(flux, tmp_path, monkeypatch):
    import comfy.model_management as mm

    calls = {"n": 0}
    real = ke._interrupted

    def interrupt_at_step_three():
        calls["n"] += 1
        if calls["n"] == 3:
            raise mm.InterruptProcessingException()
        real()

    monkeypatch.setattr(ke, "_interrupted", interrupt_at_step_three)
    with pytest.raises(mm.InterruptProcessingException):
        invert(flux, "disk", tmp_path / "rec")
    assert calls["n"] == 3 and list((tmp_path / "rec").iterdir()) == []


def test_saved_disk_record_loads_streamed_or_in_memory(flux, tmp_path):
    rec, _ = invert(flux, "disk", tmp_path / "rec", storage="int4")
    out = BackgroundKVCache.execute(rec, "keep", "keep", True, "big")
    saved = next((tmp_path / "output" / "kv_cache").glob("big_*.bgkv.safetensors"))
    assert out.args[0].place() == "disk" and "saved kv_cache/" in out.ui["text"][0]
    os.link(saved, tmp_path / "input" / saved.name)
    streamed = LoadBackgroundKV.execute(saved.name, "keep", "disk").args[0]
    in_memory = LoadBackgroundKV.execute(saved.name, "keep", "auto").args[0]
    assert streamed.place() == "disk" and in_memory.place() == "cpu"
    ref = edit(flux, rec)
    assert torch.equal(ref, edit(flux, streamed)) and torch.equal(ref, edit(flux, in_memory))


def _probe(place, steps, folder, **kw):
    args = [sys.executable, str(HELPERS / "kv_rss_probe.py"), place, str(steps), "--folder", str(folder)]
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    res = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_peak_memory_with_a_disk_record_does_not_grow_with_steps(tmp_path):
    """Peak resident memory (ru_maxrss of a fresh process) of inversion and of inversion + edit
    with the record on disk stays flat while the record grows eightfold (by ~220 MiB; a record
    in memory grows the peak by its size, see benchmarks/bench_kv_disk.py). The allowance
    covers the allocator's noise on a shared machine (about 60 MiB measured)."""
    kw = dict(hidden=256, heads=4, side=512, storage="fp32")
    few = _probe("disk", 4, tmp_path, **kw)
    many = _probe("disk", 32, tmp_path, **kw)
    grown = many["record_bytes"] - few["record_bytes"]
    assert grown > 200 * 2**20 and many["place"] == "disk"
    assert many["peak_after_inversion"] - few["peak_after_inversion"] < 0.5 * grown
    assert many["peak"] - few["peak"] < 0.5 * grown


def test_scratch_records_in_the_temp_folder_are_removed_when_dropped(flux, tmp_path):
    import gc

    scratch, text = invert(flux, "disk")  # default folder: ComfyUI's temp folder
    kept, _ = invert(flux, "disk", tmp_path / "mine")
    path = Path(scratch.store.path)
    assert path.parent == tmp_path / "temp" / "kv_records" and path.exists()
    del scratch
    gc.collect()
    assert not path.exists()
    assert Path(kept.store.path).exists()  # a folder the user chose keeps its records

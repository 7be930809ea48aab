"""KV-Edit background records: behaviour the mutation run of kernels/kv_record.py found
unguarded (issue 14). What a record file holds decides the edit; a refused file must say
exactly what is wrong; a record written while inverting must read back bit for bit."""
import os
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from record_files import rewrite_record
from precise_edit.kernels.kv_record import (BackgroundRecord, DiskRecordSink, RecordError, mask_digest,
                                            sigmas_digest)
from precise_edit.kernels.kv_store import KVStore

BLOCKS = [("double", 0), ("single", 0)]


def make(h=4, w=6, steps=2, fg=((0, 1),), all_tokens=False, storage="fp32", source_dtype=torch.float32,
         fill=True, seed=0):
    """A small record: latent [1, 16, h, w], tokens ceil(h/2) x ceil(w/2), ``fg`` token cells
    masked; keys/values of the background (or, with ``all_tokens``, every) token."""
    gen = torch.Generator().manual_seed(seed)
    th, tw = -(-h // 2), -(-w // 2)
    tmask = torch.zeros(1, th, tw, dtype=torch.bool)
    for r, c in fg:
        tmask[0, r, c] = True
    lmask = tmask.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w].contiguous()
    n = th * tw if all_tokens else int((~tmask).sum())
    trajectory = torch.randn(steps + 1, 1, 16, h, w, generator=gen)  # drawn first: the same with fill=False
    source = torch.randn(1, 16, h, w, generator=gen).to(source_dtype)
    store = KVStore(storage=storage)
    if fill and n:
        for s in range(steps):
            for b in BLOCKS:
                store.put(s, b, torch.randn(1, 2, n, 8, generator=gen), torch.randn(1, 2, n, 8, generator=gen))
    sigmas = torch.linspace(1, 0, steps + 1)
    fp = {"model": "m", "latent_shape": [1, 16, h, w], "mask": mask_digest(lmask), "steps": steps,
          "sigmas": sigmas_digest(sigmas)}
    return BackgroundRecord(store=store, trajectory=trajectory, source_latent=source,
                            latent_mask=lmask, token_mask=tmask, sigmas=sigmas, fingerprint=fp,
                            kv_shape=(1, 2, n, 8), blocks=list(BLOCKS), all_tokens=all_tokens)


def same_contents(a: BackgroundRecord, b: BackgroundRecord) -> None:
    assert torch.equal(a.trajectory, b.trajectory) and torch.equal(a.source_latent, b.source_latent)
    assert a.source_latent.dtype == b.source_latent.dtype
    assert torch.equal(a.latent_mask, b.latent_mask) and torch.equal(a.token_mask, b.token_mask)
    assert a.kv_shape == b.kv_shape and a.all_tokens == b.all_tokens and a.mask_guided == b.mask_guided
    assert sorted(a.store.keys()) == sorted(b.store.keys())
    for key in a.store.keys():
        ka, va = a.store.get(*key, "cpu", torch.float32)
        kb, vb = b.store.get(*key, "cpu", torch.float32)
        assert torch.equal(ka, kb) and torch.equal(va, vb)


def saved(rec, tmp_path, name="r.bgkv.safetensors"):
    path = str(tmp_path / name)
    rec.save(path)
    return path


def refusal(path, **kw) -> str:
    with pytest.raises(RecordError) as e:
        BackgroundRecord.load(path, **kw)
    return str(e.value)


# -- fingerprints ---------------------------------------------------------------------------------

def test_fingerprint_digests_are_stable_across_versions():
    """Records saved by earlier versions carry these digests; an edit compares them with the
    ones it computes now, so the digest of a given mask/schedule must never change."""
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[0, :2, 2:4] = True
    assert mask_digest(mask) == "c061d955bee07f5e"
    assert sigmas_digest(torch.linspace(1, 0, 5)) == "e94d5da3f156e9ee"


def test_mask_digest_tells_masks_of_other_shape_apart():
    """Same bytes, other shape (a 4x6 mask transposed): another region."""
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    assert mask_digest(mask) != mask_digest(torch.zeros(1, 6, 4, dtype=torch.bool))


def test_sigmas_digest_ignores_float_noise_but_not_another_schedule():
    s = torch.tensor([1.0, 0.7, 0.3, 0.0], dtype=torch.float64)
    assert sigmas_digest(s + 4e-7) == sigmas_digest(s)         # float32/GPU rounding: same schedule
    assert sigmas_digest(s + torch.tensor([0, 2e-6, 0, 0], dtype=torch.float64)) != sigmas_digest(s)
    assert sigmas_digest(torch.tensor([1.0, 0.6, 0.3, 0.0])) != sigmas_digest(torch.tensor([1.0, 0.7, 0.3, 0.0]))


def test_mismatches_with_a_schedule_name_the_step_count_or_the_schedule():
    rec = make(steps=2)
    other = torch.tensor([1.0, 0.4, 0.0])
    assert rec.mismatches(sigmas=rec.sigmas.clone()) == []
    assert rec.mismatches(sigmas=torch.linspace(1, 0, 4)) == ["step count (3 here, 2 in the record)"]
    assert rec.mismatches(sigmas=other) == ["sigma schedule (other scheduler, shift or denoise)"]
    # with the step count given too, the count is named once and the schedule compared as well
    assert rec.mismatches(steps=3, sigmas=torch.linspace(1, 0, 4)) == [
        "step count (3 here, 2 in the record)", "sigma schedule (other scheduler, shift or denoise)"]
    assert rec.mismatches(model="other") == ["model (the record was made with other weights, LoRAs or model type)"]


# -- the record object ------------------------------------------------------------------------------

def test_token_counts_and_recorded_tokens():
    rec = make(fg=((0, 1), (1, 2)))
    assert rec.total_tokens == 6 and rec.background_tokens == 4
    assert rec.recorded_tokens.tolist() == [0, 2, 3, 4]
    whole = make(fg=((0, 1), (1, 2)), all_tokens=True)
    assert whole.recorded_tokens.tolist() == [0, 1, 2, 3, 4, 5]
    assert rec.nbytes() == rec.store.nbytes() + rec.trajectory.numel() * 4


def test_converted_record_keeps_all_tokens_and_goes_to_the_device_asked():
    rec = make(all_tokens=True)
    moved = rec.converted(device="meta")  # any device other than the CPU is the compute device
    assert moved.all_tokens is True and moved.store.device.type == "meta"
    assert moved.place() == "compute device" and rec.place() == "cpu"


# -- files: what is written reads back -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["odd size", "all tokens", "bf16 source", "one background token",
                                  "no background token"])
def test_unusual_records_read_back_as_saved(tmp_path, kind):
    rec = {"odd size": lambda: make(h=5, w=7),
           "all tokens": lambda: make(all_tokens=True),
           "bf16 source": lambda: make(source_dtype=torch.bfloat16),
           "one background token": lambda: make(fg=((0, 0), (0, 1), (1, 0), (1, 1), (1, 2))),
           "no background token": lambda: make(fg=((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)))}[kind]()
    path = saved(rec, tmp_path)
    for back in (BackgroundRecord.load(path), BackgroundRecord.load(path, stream=True)):
        same_contents(rec, back)
        back.store.release()


def test_an_older_header_without_the_later_fields_loads_with_their_defaults(tmp_path):
    """Files from before source_dtype / all_tokens / mask_guided / info were written."""
    path = rewrite_record(saved(make(), tmp_path), lambda t, h: [h.pop(k) for k in
                                                         ("source_dtype", "all_tokens", "mask_guided", "info")])
    back = BackgroundRecord.load(path)
    assert back.source_latent.dtype == torch.float32 and back.all_tokens is False
    assert back.mask_guided is False and back.info == {}
    same_contents(make(), back)


def test_streamed_load_reads_no_further_ahead_than_its_depth(tmp_path):
    rec = make(steps=4)
    path = saved(rec, tmp_path)
    back = BackgroundRecord.load(path, stream=True, depth=1)
    entry = back.store.entry_bytes()
    for key in back.store.use_order():
        back.store.get(*key, "cpu", torch.float32)
        time.sleep(0.02)  # a slow edit: the reader would run ahead if it were allowed to
    back.store.release()
    assert back.store.peak_bytes == entry


# -- files: what is refused, and the message -----------------------------------------------------

def _nan(t):
    t = t.clone()
    t.view(-1)[3] = float("nan")
    return t


@pytest.mark.parametrize("name", ["trajectory", "source_latent"])
def test_a_record_with_non_finite_latents_is_refused(tmp_path, name):
    path = rewrite_record(saved(make(), tmp_path), lambda t, h: t.__setitem__(name, _nan(t[name])))
    assert refusal(path) == f"the record's {name} holds NaN or infinite values; the file is damaged, invert again"


@pytest.mark.parametrize("storage", ["fp32", "fp8"])
def test_a_record_with_non_finite_keys_is_refused_when_read_into_memory(tmp_path, storage):
    rec = make(storage=storage)
    e = rec.store.entries[(1, ("single", 0))]
    e["v"] = _nan(e["v"]) if storage == "fp32" else e["v"].view(torch.uint8).clone().fill_(0x7F).view(e["v"].dtype)
    assert refusal(saved(rec, tmp_path)) == ("the record's keys/values (step 1, single block 0) holds NaN or "
                                             "infinite values; the file is damaged, invert again")


def test_a_record_whose_keys_do_not_fit_its_shape_is_not_saved(tmp_path):
    rec = make()
    rec.kv_shape = (1, 2, 4, 8)  # the store holds 5 tokens
    with pytest.raises(RecordError) as e:
        rec.save(str(tmp_path / "r.bgkv.safetensors"))
    assert str(e.value) == "keys/values of step 0 do not fit the record's shape (1, 2, 4, 8)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change,message", [
    (lambda t, h: t.__setitem__("source_latent", t["source_latent"][..., :5].contiguous()),
     "tensor 'source_latent' has shape [1, 16, 4, 5], expected [1, 16, 4, 6]"),
    (lambda t, h: t.__setitem__("latent_mask", t["latent_mask"].reshape(1, 6, 4).contiguous()),
     "tensor 'latent_mask' has shape [1, 6, 4], expected [1, 4, 6]"),
    (lambda t, h: t.__setitem__("token_mask", t["token_mask"].reshape(1, 3, 2).contiguous()),
     "tensor 'token_mask' has shape [1, 3, 2], expected [1, 2, 3]"),
    (lambda t, h: t.__setitem__("sigmas", t["sigmas"][:2].contiguous()),
     "tensor 'sigmas' has shape [2], expected [3]"),
    (lambda t, h: t.__setitem__("sigmas", t["sigmas"] * 0.5),
     "the masks or sigmas do not match the record's fingerprint (file altered?)"),
    (lambda t, h: h.__setitem__("source_dtype", "no_such_type"), "bad source latent type"),
    (lambda t, h: h.__setitem__("kv_shape", [1, 2, 6, 8]), "key/value shape [1, 2, 6, 8] does not fit 5 background tokens"),
    (lambda t, h: h.__setitem__("all_tokens", True), "key/value shape [1, 2, 5, 8] does not fit 6 image tokens"),
    (lambda t, h: t.update({f"extra{i}": torch.zeros(1) for i in range(6)}),
     "unknown tensors ['extra0', 'extra1', 'extra2', 'extra3', 'extra4']"),
    (lambda t, h: h.__setitem__("steps", [0, 5]), "recorded steps [0, 5] outside 0..1"),
])
def test_a_broken_record_says_exactly_what_is_wrong(tmp_path, change, message):
    assert refusal(rewrite_record(saved(make(), tmp_path), change)) == message


def test_a_record_without_background_tokens_but_with_keys_is_refused(tmp_path):
    empty = make(fg=((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)))
    path = rewrite_record(saved(empty, tmp_path),
                   lambda t, h: t.update({"kv.k.0.double.0": torch.zeros(1, 2, 0, 8)}))
    assert refusal(path) == "a record without background tokens holds keys/values"


def test_refusals_name_the_file_and_leave_it_closed(tmp_path):
    path = saved(make(), tmp_path, "named.bgkv.safetensors")
    fds = set(os.listdir("/proc/self/fd"))
    rewrite_record(path, lambda t, h: h.pop("blocks"))
    assert refusal(path) == "named.bgkv.safetensors is not a valid record: 'blocks'"
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    save_file(load_file(path), path, metadata=dict(meta, version="2", complete="0"))
    assert refusal(path, stream=True) == ("named.bgkv.safetensors was not finished (the inversion writing it was "
                                          "interrupted); invert again")
    assert set(os.listdir("/proc/self/fd")) <= fds  # no file left open by a refused load


# -- the record written while inverting ------------------------------------------------------------

def test_a_record_written_while_inverting_reads_back_bit_for_bit(tmp_path):
    rec = make(steps=3)
    path = str(tmp_path / "s.bgkv.safetensors")
    base = make(steps=3, fill=False)
    sink = DiskRecordSink(path, base, steps=[2, 1], depth=2)
    assert sink.header["steps"] == [1, 2]
    sink.open()
    for step in (2, 1):  # the inversion goes from the last step to the first
        for b in BLOCKS:
            sink.put(step, b, *rec.store.get(step, b, "cpu", torch.float32))
    out = sink.finish(rec.trajectory.double())
    assert out.place() == "disk" and os.path.getsize(path) == sink.nbytes()
    assert not os.path.exists(path + ".partial")
    assert sorted(out.store.keys()) == [(s, b) for s in (1, 2) for b in BLOCKS]
    assert out.trajectory.dtype == torch.float32 and torch.equal(out.trajectory, rec.trajectory)
    assert torch.equal(out.source_latent, base.source_latent) and out.fingerprint == base.fingerprint
    for key in out.store.use_order():
        k, v = out.store.get(*key, "cpu", torch.float32)
        k0, v0 = rec.store.get(*key, "cpu", torch.float32)
        assert torch.equal(k, k0) and torch.equal(v, v0)
    out.store.release()
    again = BackgroundRecord.load(path)
    assert again.store.storage == "fp32" and again.kv_shape == (1, 2, 5, 8)


def test_a_record_without_background_written_while_inverting(tmp_path):
    base = make(fg=((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)), fill=False)
    path = str(tmp_path / "e.bgkv.safetensors")
    sink = DiskRecordSink(path, base, steps=[0, 1]).open()
    assert sink.keys == [] and sink.header["steps"] == []
    out = sink.finish(base.trajectory)
    assert out.background_tokens == 0 and list(out.store.keys()) == []


def test_an_aborted_record_leaves_nothing(tmp_path):
    base = make(fill=False)
    path = str(tmp_path / "a.bgkv.safetensors")
    DiskRecordSink(path, base, steps=[0]).abort()  # never opened: nothing to stop
    sink = DiskRecordSink(path, base, steps=[0, 1]).open()
    sink.put(1, BLOCKS[0], torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_record_without_background_that_lists_its_steps_loads(tmp_path):
    """A fully masked record whose header lists recorded steps (nothing to read for them)."""
    empty = make(fg=((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)))
    path = rewrite_record(saved(empty, tmp_path), lambda t, h: h.__setitem__("steps", [0, 1]))
    back = BackgroundRecord.load(path)
    assert back.background_tokens == 0 and list(back.store.keys()) == []


def test_a_record_of_one_background_token_written_while_inverting(tmp_path):
    rec = make(fg=((0, 0), (0, 1), (1, 0), (1, 1), (1, 2)))
    sink = DiskRecordSink(str(tmp_path / "o.bgkv.safetensors"), make(fg=((0, 0), (0, 1), (1, 0), (1, 1), (1, 2)),
                                                                     fill=False), steps=[0, 1]).open()
    for key in rec.store.use_order():
        sink.put(*key, *rec.store.get(*key, "cpu", torch.float32))
    same_contents(rec, sink.finish(rec.trajectory))


def test_the_depth_given_bounds_writing_and_reading(tmp_path):
    """The memory limit decides ``depth``: at most that many staging buffers while writing,
    and entries read ahead while editing."""
    rec = make(steps=4)
    sink = DiskRecordSink(str(tmp_path / "d.bgkv.safetensors"), make(steps=4, fill=False), steps=[0, 1, 2, 3],
                          depth=1).open()
    for key in reversed(rec.store.use_order()):
        sink.put(*key, *rec.store.get(*key, "cpu", torch.float32))
    assert sink.writer._made == 1  # staging buffers made
    out = sink.finish(rec.trajectory, depth=1)
    for key in out.store.use_order():
        out.store.get(*key, "cpu", torch.float32)
        time.sleep(0.02)  # a slow edit: the reader would run ahead if it were allowed to
    out.store.release()
    assert out.store.peak_bytes == out.store.entry_bytes()

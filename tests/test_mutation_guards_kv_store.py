"""KV-Edit key/value store (kernels/kv_store.py): behaviour the mutation run found unguarded
(issue 14). The store's contents are what the edit attends to; its sizes decide where a
record goes (memory or disk); a bad request must say what is wrong."""
import pytest
import torch

from precise_edit.kernels import kv_store
from precise_edit.kernels.kv_store import (KVStore, KVStoreError, bytes_per_token_step, cuda_transfer, entry_nbytes,
                                           entry_parts, storage_dtype, use_rank)

SHAPE = (1, 2, 5, 8)


def kv(seed=0, shape=SHAPE, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * scale, torch.randn(shape, generator=gen) * scale


def test_an_unknown_storage_type_names_the_choices():
    with pytest.raises(KVStoreError) as e:
        storage_dtype("int3")
    assert str(e.value) == ("unknown or unavailable storage type 'int3'; choose one of "
                            "['bf16', 'fp16', 'fp32', 'fp8', 'int4', 'int2']")
    with pytest.raises(KVStoreError, match="unknown or unavailable storage type 'q8'"):
        KVStore(storage="q8")


def test_keys_and_values_of_unequal_shape_are_refused():
    store = KVStore(storage="fp32")
    k, v = kv()
    with pytest.raises(KVStoreError) as e:
        store.put(0, ("double", 0), k, v[:, :, :4])
    assert str(e.value) == ("keys/values must be [B, heads, tokens, dim] of equal shape, got (1, 2, 5, 8) and "
                            "(1, 2, 4, 8)")
    with pytest.raises(KVStoreError, match=r"got \(2, 5, 8\) and \(2, 5, 8\)"):
        store.put(0, ("double", 0), k[0], k[0])
    assert store.nbytes() == 0 and list(store.keys()) == []


@pytest.mark.parametrize("storage", ["bf16", "fp16", "fp32", "fp8", "int4", "int2"])
def test_an_entry_has_the_parts_and_size_its_layout_states(storage):
    """Record files and the memory/disk choice use entry_parts / entry_nbytes; the store must
    hold exactly those tensors."""
    store = KVStore(storage=storage)
    store.put(3, ("single", 1), *kv())
    held = store.entries[(3, ("single", 1))]
    assert [(n, t.dtype, tuple(t.shape)) for n, t in held.items()] == entry_parts(storage, SHAPE)
    assert store.nbytes() == entry_nbytes(storage, SHAPE)


def test_entry_sizes_at_a_known_shape():
    assert entry_nbytes("fp32", SHAPE) == 2 * 80 * 4
    assert entry_nbytes("fp8", SHAPE) == 2 * 80 + 2 * 4
    # int4: codes 2 x 40 bytes, key stats [1, 2, 1, 8] x 2 in bf16, value stats [1, 2, 5, 1] x 2 in bf16
    assert entry_nbytes("int4", SHAPE) == 80 + 2 * 16 * 2 + 2 * 10 * 2
    assert entry_nbytes("int2", SHAPE) == 40 + 2 * 16 * 2 + 2 * 10 * 2
    assert bytes_per_token_step(57, 3072, "int4") == 2 * 57 * 3072 / 2
    assert bytes_per_token_step(57, 3072, "int2") == 2 * 57 * 3072 / 4
    assert bytes_per_token_step(2, 8, "fp32") == 2 * 2 * 8 * 4


@pytest.mark.parametrize("storage", ["fp8", "int4", "int2", "bf16"])
def test_all_zero_keys_come_back_as_zeros(storage):
    """A zero tensor (e.g. padding tokens) has no range to scale by: no NaN, no offset (the
    low-bit minimum is rounded down by 1e-30, far below any value attention can tell apart)."""
    store = KVStore(storage=storage)
    z = torch.zeros(SHAPE)
    store.put(0, ("double", 0), z, z)
    k, v = store.get(0, ("double", 0), "cpu", torch.float32)
    assert k.abs().max() < 1e-29 and v.abs().max() < 1e-29


def test_fp8_keeps_large_values_within_its_precision():
    """Scaled per tensor to the fp8 range: keys of magnitude 1e4 come back within fp8's
    relative precision (unscaled they would overflow to NaN)."""
    store = KVStore(storage="fp8")
    k, v = kv(scale=1e4)
    store.put(0, ("double", 0), k, v)
    k2, v2 = store.get(0, ("double", 0), "cpu", torch.float32)
    assert ((k2 - k).abs() <= k.abs().amax() * 2 ** -4).all() and ((v2 - v).abs() <= v.abs().amax() * 2 ** -4).all()
    assert k2.abs().amax() == pytest.approx(k.abs().amax().item(), rel=2 ** -4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("storage", ["fp32", "fp8", "int4"])
def test_entries_come_back_in_the_dtype_asked(storage, dtype):
    store = KVStore(storage=storage)
    store.put(0, ("double", 0), *kv())
    k, v = store.get(0, ("double", 0), "cpu", dtype)
    assert k.dtype == dtype and v.dtype == dtype


def test_the_denoising_order_puts_unknown_block_kinds_last():
    keys = [(1, ("single", 0)), (0, ("other", 0)), (0, ("single", 2)), (0, ("double", 5)), (0, ("single", 1)),
            (1, ("double", 0)), (0, ("aaa", 0))]
    assert sorted(keys, key=use_rank) == [(0, ("double", 5)), (0, ("single", 1)), (0, ("single", 2)),
                                          (0, ("aaa", 0)), (0, ("other", 0)), (1, ("double", 0)),
                                          (1, ("single", 0))]


def test_lookups_steps_blocks_and_token_count():
    store = KVStore(storage="fp32")
    for s in (2, 0):
        for b in (("single", 1), ("double", 0)):
            store.put(s, b, *kv(s))
    assert store.has("2", ["single", "1"]) and not store.has(1, ("single", 1))
    assert store.steps() == [0, 2] and store.blocks() == [("double", 0), ("single", 1)]
    assert store.token_count() == 5
    assert store.use_order() == [(0, ("double", 0)), (0, ("single", 1)), (2, ("double", 0)), (2, ("single", 1))]


def test_dropping_a_step_forgets_it_and_its_copies_in_flight():
    log = []

    class Transfer:
        def start(self, key, fetch):
            log.append(("start", key))
            return fetch()

        def finish(self, key, handle):
            return handle

        def discard(self, key, handle):
            log.append(("discard", key))

    store = KVStore(storage="fp32")
    for s in range(3):
        store.put(s, ("double", 0), *kv(s))
    store.transfer_factory = lambda device, host: Transfer()
    store.get(0, ("double", 0), "cpu", torch.float32)  # copies step 1 ahead
    assert store.in_flight() == [(1, ("double", 0))]
    store.drop_step(1)
    assert ("discard", (1, ("double", 0))) in log and store.in_flight() == []
    assert store.steps() == [0, 2] and store.use_order() == [(0, ("double", 0)), (2, ("double", 0))]
    with pytest.raises(KVStoreError, match=r"^no recorded keys/values for step 1, double block 0$"):
        store.get(1, ("double", 0), "cpu", torch.float32)


def test_converted_store_on_another_device_keeps_its_contents():
    store = KVStore(storage="fp32")
    store.put(0, ("double", 0), *kv())
    moved = store.converted(device="meta")
    assert moved.device.type == "meta" and moved.storage == "fp32"
    assert moved.entries[(0, ("double", 0))]["k"].device.type == "meta"
    small = store.converted("int4")
    assert small.storage == "int4" and small.peak_bytes == small.nbytes() == entry_nbytes("int4", SHAPE)


def test_side_stream_copies_only_from_host_memory_to_a_cuda_device(monkeypatch):
    monkeypatch.setattr(kv_store, "_side_stream", lambda device: ("stream", device))
    assert cuda_transfer(torch.device("cpu"), torch.device("cpu")) is None
    assert cuda_transfer(torch.device("cuda", 0), torch.device("cuda", 0)) is None
    t = cuda_transfer(torch.device("cuda", 0), torch.device("cpu"))
    assert isinstance(t, kv_store.CudaTransfer) and t.device == torch.device("cuda", 0)
    assert t.stream == ("stream", torch.device("cuda", 0))


class CheckedTransfer:
    """Stands in for the CUDA side stream; checks that every copy made ahead is later used or
    discarded with its own handle, and that the copy holds the entry decoded as asked."""

    def __init__(self, log):
        self.log, self.handles = log, {}

    def start(self, key, fetch):
        handle = ("handle", key, fetch())
        self.handles[key] = handle
        self.log.append(("start", key))
        return handle

    def finish(self, key, handle):
        assert handle is self.handles.pop(key)
        self.log.append(("finish", key))
        return handle[2]

    def discard(self, key, handle):
        assert handle is self.handles.pop(key)
        self.log.append(("discard", key))


def filled(storage="int4", steps=3, blocks=(("double", 0), ("single", 0))):
    store = KVStore(storage=storage)
    for s in reversed(range(steps)):
        for b in blocks:
            store.put(s, b, *kv(s * 10 + b[1] + (5 if b[0] == "single" else 0)))
    return store


def reference(storage, key):
    return filled(storage).get(*key, "cpu", torch.float32)


def with_transfer(store, depth):
    log, made = [], []

    def factory(device, host):
        made.append((device, host))
        return CheckedTransfer(log)

    store.prefetch_depth = depth
    store.transfer_factory = factory
    return log, made


@pytest.mark.parametrize("depth", [2, 3])
def test_copies_made_ahead_are_all_used_in_a_deep_window(depth):
    store = filled("int4")
    log, made = with_transfer(store, depth)
    order = store.use_order()
    for key in order:
        k, v = store.get(*key, "cpu", torch.bfloat16)
        k0, v0 = reference("int4", key)
        assert k.dtype == torch.bfloat16 and torch.equal(k, k0.bfloat16()) and torch.equal(v, v0.bfloat16())
    assert [k for what, k in log if what == "start"] == order[1:]
    assert [k for what, k in log if what == "finish"] == order[1:]
    assert made == [(torch.device("cpu"), torch.device("cpu"))]  # one transfer per device, from the store's device


def test_a_copy_made_for_another_dtype_is_discarded_and_decoded_again():
    store = filled("int4")
    log, _ = with_transfer(store, 1)
    store.get(0, ("double", 0), "cpu", torch.float32)       # copies (0, single 0) ahead in float32
    k, v = store.get(0, ("single", 0), "cpu", torch.float16)  # asked in float16: the copy is not used
    assert ("discard", (0, ("single", 0))) in log and ("finish", (0, ("single", 0))) not in log
    k0, v0 = reference("int4", (0, ("single", 0)))
    assert k.dtype == torch.float16 and torch.equal(k, k0.half()) and torch.equal(v, v0.half())
    store.release()
    assert store.in_flight() == [] and not [e for e in log if e[0] == "start" and e[1] not in
                                            [d[1] for d in log if d[0] in ("discard", "finish")]]


def test_dropping_a_step_or_releasing_discards_each_copy_with_its_handle():
    store = filled("fp32")
    log, _ = with_transfer(store, 2)
    store.get(0, ("single", 0), "cpu", torch.float32)
    assert store.in_flight() == [(1, ("double", 0)), (1, ("single", 0))]
    store.drop_step(1)
    store.get(2, ("double", 0), "cpu", torch.float32)  # a jump: the window moves
    store.release()
    assert store.in_flight() == []
    started = [k for what, k in log if what == "start"]
    ended = [k for what, k in log if what in ("finish", "discard")]
    assert sorted(started) == sorted(ended)


def test_denoising_order_of_a_store_with_other_block_kinds():
    store = filled("fp32", steps=1, blocks=(("single", 0), ("other", 0), ("double", 1)))
    assert store.use_order() == [(0, ("double", 1)), (0, ("single", 0)), (0, ("other", 0))]


def test_converted_from_low_bits_keeps_the_values():
    store = filled("int4", steps=1)
    wide = store.converted("fp32")
    for key in store.use_order():
        k, v = wide.get(*key, "cpu", torch.float32)
        k0, v0 = store.get(*key, "cpu", torch.float32)
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_fp8_keeps_small_values_within_its_precision():
    """Keys of magnitude 1e-6 are scaled up to the fp8 range too (not flushed to fp8's subnormals)."""
    store = KVStore(storage="fp8")
    k, v = kv(scale=1e-6)
    store.put(0, ("double", 0), k, v)
    k2, v2 = store.get(0, ("double", 0), "cpu", torch.float32)
    assert ((k2 - k).abs() <= k.abs().amax() * 2 ** -4).all() and ((v2 - v).abs() <= v.abs().amax() * 2 ** -4).all()


def test_a_jump_discards_the_copies_left_behind_with_their_handles():
    store = filled("fp32")
    log, _ = with_transfer(store, 2)
    store.get(0, ("double", 0), "cpu", torch.float32)   # copies (0, single 0), (1, double 0) ahead
    store.get(2, ("double", 0), "cpu", torch.float32)   # a second edit starting later
    assert [k for what, k in log if what == "discard"] == [(0, ("single", 0)), (1, ("double", 0))]
    assert store.in_flight() == [(2, ("single", 0))]
    store.release()


def test_values_recorded_are_copies():
    """FLUX updates tensors in place after attention: the record must keep what it was given."""
    k, v = kv()
    store = KVStore(storage="fp32")
    store.put(0, ("double", 0), k, v)
    k0, v0 = k.clone(), v.clone()
    k.add_(1)
    v.add_(1)
    k2, v2 = store.get(0, ("double", 0), "cpu", torch.float32)
    assert torch.equal(k2, k0) and torch.equal(v2, v0)


def test_a_streamed_edit_hands_back_its_read_buffers(tmp_path):
    """Replay.get gives a streamed store the parts it decoded, so their read buffer is reused
    (no allocation per block)."""
    from test_mutation_guards_kv_disk import keys as disk_keys
    from test_mutation_guards_kv_disk import open_store, write

    path = tmp_path / "r.bgkv.safetensors"
    write(path, "int4", steps=4)
    store = open_store(path, "int4", steps=4, depth=1)
    made = []
    entry_bytes = store.entry_bytes
    store.entry_bytes = lambda: made.append(1) or entry_bytes()  # asked each time a new buffer is made
    for key in disk_keys(4):
        store.get(*key, "cpu", torch.float32)
    store.release()
    assert len(made) <= 4  # 12 when every block allocates its own

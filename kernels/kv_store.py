"""Storage of recorded attention keys/values: background tokens only, in a chosen type.

A :class:`KVStore` holds, for every (step, block) entry, the keys and values of the
background tokens as they entered attention (after QK-norm and rotary embedding),
shaped ``[B, heads, tokens, head_dim]``. Storage types:

* ``bf16`` (default), ``fp16``, ``fp32``: a plain cast;
* ``fp8``: ``float8_e4m3fn`` with one float32 scale per tensor (``amax / 448``);
* ``int4`` / ``int2``: KIVI-style codes, keys per channel and values per token
  (:mod:`.kv_quant`), about 0.27x / 0.14x the size of bf16.

An entry is a few named parts (``k``, ``v`` and, for the scaled types, ``ks``/``vs`` scales
and ``km``/``vm`` minimums); :func:`entry_parts` lists them with their types and shapes, which
is also the layout of record files (:mod:`.kv_record`, :mod:`.kv_disk`).

Entries live on the storage device (CPU by default). :meth:`KVStore.get` brings one entry to
the compute device. On CUDA the next entries *in the order the denoising loop uses them*
(steps ascending, double blocks then single blocks) are copied ahead on a side stream; the
inversion records steps from last to first, so this order is not the recording order. At
most ``prefetch_depth`` copies are in flight; stale ones are dropped. The side stream is
reached through a :class:`CudaTransfer` made by ``transfer_factory``, which tests replace.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import kv_quant

STORAGE_TYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8": getattr(torch, "float8_e4m3fn", None),
    "int4": torch.uint8,
    "int2": torch.uint8,
}
FP8_MAX = 448.0
BLOCK_RANK = {"double": 0, "single": 1}


class KVStoreError(ValueError):
    pass


def storage_dtype(name: str) -> torch.dtype:
    if name not in STORAGE_TYPES or STORAGE_TYPES[name] is None:
        raise KVStoreError(f"unknown or unavailable storage type {name!r}; choose one of "
                           f"{[k for k, v in STORAGE_TYPES.items() if v is not None]}")
    return STORAGE_TYPES[name]


def entry_key(step: int, block: tuple[str, int]) -> str:
    return f"{step}.{block[0]}.{block[1]}"


def norm_key(step, block) -> tuple[int, tuple[str, int]]:
    return int(step), (str(block[0]), int(block[1]))


def use_rank(key) -> tuple:
    """Sort key of the order in which denoising reads entries: steps ascending, then the
    model's forward order (every double block, then every single block)."""
    step, (kind, index) = key
    return step, BLOCK_RANK.get(kind, len(BLOCK_RANK)), kind, index


def entry_parts(storage: str, shape) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """Names, types and shapes of the tensors of one entry with keys/values of ``shape``."""
    shape = tuple(int(d) for d in shape)
    dt = storage_dtype(storage)
    if storage in kv_quant.BITS:
        bits = kv_quant.BITS[storage]
        packed = shape[:3] + (kv_quant.packed_dim(shape[3], bits),)
        ks, vs = kv_quant.key_stat_shape(shape), kv_quant.value_stat_shape(shape)
        st = kv_quant.STAT_DTYPE
        return [("k", dt, packed), ("v", dt, packed), ("ks", st, ks), ("km", st, ks), ("vs", st, vs), ("vm", st, vs)]
    parts = [("k", dt, shape), ("v", dt, shape)]
    if storage == "fp8":
        parts += [("ks", torch.float32, (1,)), ("vs", torch.float32, (1,))]
    return parts


def entry_nbytes(storage: str, shape) -> int:
    n = 0
    for _, dt, shp in entry_parts(storage, shape):
        size = torch.tensor([], dtype=dt).element_size()
        for d in shp:
            size *= d
        n += size
    return n


def _fp8(t: torch.Tensor):
    t32 = t.detach().float()
    amax = t32.abs().amax().clamp(min=1e-12)
    scale = (amax / FP8_MAX).reshape(1)
    return (t32 / scale).clamp(-FP8_MAX, FP8_MAX).to(STORAGE_TYPES["fp8"]), scale


def encode(k: torch.Tensor, v: torch.Tensor, storage: str) -> dict[str, torch.Tensor]:
    """The parts of one entry, on the device of ``k`` (always fresh tensors, never views)."""
    if storage in kv_quant.BITS:
        bits = kv_quant.BITS[storage]
        qk, sk, mk = kv_quant.quantize_keys(k.detach(), bits)
        qv, sv, mv = kv_quant.quantize_values(v.detach(), bits)
        return {"k": qk, "v": qv, "ks": sk, "km": mk, "vs": sv, "vm": mv}
    if storage == "fp8":
        qk, sk = _fp8(k)
        qv, sv = _fp8(v)
        return {"k": qk, "v": qv, "ks": sk, "vs": sv}
    dt = storage_dtype(storage)
    return {"k": k.detach().to(dtype=dt, copy=True), "v": v.detach().to(dtype=dt, copy=True)}


def decode(parts: dict[str, torch.Tensor], storage: str, dtype, device, non_blocking=False):
    """Keys and values of one entry on ``device`` in ``dtype``."""
    p = {n: t.to(device, non_blocking=non_blocking) for n, t in parts.items()}
    if storage in kv_quant.BITS:
        bits = kv_quant.BITS[storage]
        k = kv_quant.dequantize_keys(p["k"], p["ks"], p["km"], bits)
        v = kv_quant.dequantize_values(p["v"], p["vs"], p["vm"], bits)
        return k.to(dtype), v.to(dtype)
    if storage == "fp8":
        return (p["k"].to(torch.float32) * p["ks"]).to(dtype), (p["v"].to(torch.float32) * p["vs"]).to(dtype)
    return p["k"].to(dtype), p["v"].to(dtype)


def _nbytes(parts: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


class CudaTransfer:
    """Copies entries to a CUDA device on a side stream, so they overlap the compute stream."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.stream = _side_stream(self.device)

    def start(self, key, fetch):
        with torch.cuda.stream(self.stream):
            k, v = fetch()
            event = torch.cuda.Event()
            event.record(self.stream)
        return event, k, v

    def finish(self, key, handle):
        event, k, v = handle
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        k.record_stream(current)  # allocated on the side stream, used (and freed) on this one
        v.record_stream(current)
        return k, v

    def discard(self, key, handle):
        event, k, v = handle
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        k.record_stream(current)
        v.record_stream(current)


def cuda_transfer(device: torch.device, host_device: torch.device):
    """The transfer for copies from ``host_device`` to ``device``; None when there is nothing
    to overlap (not CUDA, or the store already lives on the GPU)."""
    if device.type != "cuda" or host_device.type == "cuda":
        return None
    return CudaTransfer(device)


class Replay:
    """Reading entries back in use order with a bounded number of device copies in flight.
    Subclasses provide ``storage``, ``has_key``, ``host_parts`` and ``keys``."""

    prefetch_depth: int = 1
    transfer_factory = staticmethod(cuda_transfer)
    host_device = torch.device("cpu")

    def _replay_state(self):
        if not hasattr(self, "_prefetched"):
            self._prefetched = {}
            self._transfers = {}
            self._use_order = None
        return self._prefetched

    def use_order(self) -> list:
        self._replay_state()
        if self._use_order is None:
            order = sorted(self.keys(), key=use_rank)
            self._use_order = (order, {k: i for i, k in enumerate(order)})
        return self._use_order[0]

    def _orders_changed(self):
        self._replay_state()
        self._use_order = None

    def in_flight(self) -> list:
        return list(self._replay_state())

    def _transfer(self, device):
        self._replay_state()
        if device not in self._transfers:
            self._transfers[device] = self.transfer_factory(device, self.host_device)
        return self._transfers[device]

    def get(self, step: int, block: tuple[str, int], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one entry on ``device`` in ``dtype``."""
        key = norm_key(step, block)
        if not self.has_key(key):
            raise KVStoreError(f"no recorded keys/values for step {step}, {block[0]} block {block[1]}")
        device = torch.device(device)
        transfer = self._transfer(device)
        if transfer is None:
            parts = self.host_parts(key)
            return self.after_decode(parts, *decode(parts, self.storage, dtype, device))
        pending = self._replay_state()
        order = self.use_order()
        pos = self._use_order[1][key]
        mine = pending.pop(key, None)
        for other in list(pending):  # stale: passed, beyond the window (the edit jumped), other device/type
            at = self._use_order[1].get(other, -1)
            if not pos < at <= pos + self.prefetch_depth or pending[other][0] != (device, dtype):
                old = pending.pop(other)
                old[2].discard(other, old[1])
        if mine is not None and mine[0] == (device, dtype):
            k, v = transfer.finish(key, mine[1])
        else:
            if mine is not None:
                mine[2].discard(key, mine[1])
            k, v = decode(self.host_parts(key), self.storage, dtype, device)
        for nxt in order[pos + 1: pos + 1 + self.prefetch_depth]:
            if nxt not in pending:
                handle = transfer.start(nxt, lambda nxt=nxt: decode(self.host_parts(nxt), self.storage, dtype,
                                                                   device, non_blocking=True))
                pending[nxt] = ((device, dtype), handle, transfer)
        return k, v

    def after_decode(self, parts, k, v):
        """Hook for stores that reuse the host buffers of ``parts``."""
        return k, v

    def release(self) -> None:
        """Drop every copy in flight (end of an edit)."""
        pending = self._replay_state()
        for key in list(pending):
            old = pending.pop(key)
            old[2].discard(key, old[1])


@dataclass
class KVStore(Replay):
    """Keys/values of background tokens, per (step, block), in memory."""

    storage: str = "bf16"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    entries: dict = field(default_factory=dict)
    peak_bytes: int = 0

    def __post_init__(self):
        storage_dtype(self.storage)
        self.device = torch.device(self.device)
        self.host_device = self.device

    # -- recording ---------------------------------------------------------------------
    def put(self, step: int, block: tuple[str, int], k: torch.Tensor, v: torch.Tensor) -> None:
        if k.shape != v.shape or k.ndim != 4:
            raise KVStoreError(f"keys/values must be [B, heads, tokens, dim] of equal shape, got "
                               f"{tuple(k.shape)} and {tuple(v.shape)}")
        pin = self.device.type == "cpu" and k.is_cuda
        parts = {n: t.to(self.device) for n, t in encode(k, v, self.storage).items()}
        if pin:
            parts = {n: t.pin_memory() for n, t in parts.items()}
        self.put_parts(norm_key(step, block), parts)

    def put_parts(self, key, parts: dict[str, torch.Tensor]) -> None:
        self.entries[key] = parts
        self._orders_changed()
        self.peak_bytes = max(self.peak_bytes, self.nbytes())

    def drop_step(self, step: int) -> None:
        """Forget every entry of ``step`` (the inversion-free variant keeps one step only)."""
        pending = self._replay_state()
        for key in [k for k in self.entries if k[0] == step]:
            del self.entries[key]
            if key in pending:
                old = pending.pop(key)
                old[2].discard(key, old[1])
        self._orders_changed()

    # -- replay ------------------------------------------------------------------------
    def keys(self):
        return self.entries.keys()

    def has_key(self, key) -> bool:
        return key in self.entries

    def has(self, step: int, block: tuple[str, int]) -> bool:
        return norm_key(step, block) in self.entries

    def host_parts(self, key) -> dict[str, torch.Tensor]:
        return self.entries[key]

    # -- bookkeeping ---------------------------------------------------------------------
    def nbytes(self) -> int:
        return sum(_nbytes(e) for e in self.entries.values())

    def token_count(self) -> int:
        first = next(iter(self.entries.values()), None)
        return 0 if first is None else first["k"].shape[2]

    def steps(self) -> list[int]:
        return sorted({k[0] for k in self.entries})

    def blocks(self) -> list[tuple[str, int]]:
        return sorted({k[1] for k in self.entries})

    def converted(self, storage: str | None = None, device=None) -> "KVStore":
        """A copy in another storage type and/or on another device (the original is untouched)."""
        storage = storage or self.storage
        out = KVStore(storage=storage, device=device if device is not None else self.device)
        for key in self.use_order():
            e = self.entries[key]
            if storage == self.storage:
                out.entries[key] = {n: t.to(out.device, copy=True) for n, t in e.items()}
            else:
                k, v = decode(e, self.storage, torch.float32, "cpu")
                out.put(key[0], key[1], k, v)
        out._orders_changed()
        out.peak_bytes = out.nbytes()
        return out


_STREAMS: dict = {}


def _side_stream(device):
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]


def bytes_per_token_step(blocks: int, hidden: int, storage: str) -> float:
    """Bytes stored per background token per step: keys and values of every block
    (fp8 scales are per tensor and do not grow with tokens; the scales/minimums of
    int4/int2 are left out: use :func:`entry_nbytes` for exact sizes)."""
    if storage in kv_quant.BITS:
        return 2 * blocks * hidden * kv_quant.BITS[storage] / 8
    size = 1 if storage == "fp8" else torch.tensor([], dtype=storage_dtype(storage)).element_size()
    return 2 * blocks * hidden * size

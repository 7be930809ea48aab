"""Storage of recorded attention keys/values: background tokens only, in a chosen type.

A :class:`KVStore` holds, for every (step, block) entry, the keys and values of the
background tokens as they entered attention (after QK-norm and rotary embedding),
shaped ``[B, heads, tokens, head_dim]``. Storage types:

* ``bf16`` (default), ``fp16``, ``fp32``: a plain cast;
* ``fp8``: ``float8_e4m3fn`` with one float32 scale per tensor (``amax / 448``).

Entries live on the storage device (CPU by default). :meth:`KVStore.get` brings one entry
to the compute device; on CUDA the next entry's copy is started on a side stream first,
so host-to-device transfers overlap the current block's compute.

The store serialises to a flat dict of tensors plus a JSON-able header, for safetensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

STORAGE_TYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8": getattr(torch, "float8_e4m3fn", None),
}
FP8_MAX = 448.0


class KVStoreError(ValueError):
    pass


def storage_dtype(name: str) -> torch.dtype:
    if name not in STORAGE_TYPES or STORAGE_TYPES[name] is None:
        raise KVStoreError(f"unknown or unavailable storage type {name!r}; choose one of "
                           f"{[k for k, v in STORAGE_TYPES.items() if v is not None]}")
    return STORAGE_TYPES[name]


def entry_key(step: int, block: tuple[str, int]) -> str:
    return f"{step}.{block[0]}.{block[1]}"


@dataclass
class _Entry:
    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    def nbytes(self) -> int:
        n = self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()
        for s in (self.k_scale, self.v_scale):
            if s is not None:
                n += s.numel() * s.element_size()
        return n


def _quantize(t: torch.Tensor, kind: str, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    if kind == "fp8":
        t32 = t.detach().float()
        amax = t32.abs().amax().clamp(min=1e-12)
        scale = (amax / FP8_MAX).reshape(1)
        q = (t32 / scale).clamp(-FP8_MAX, FP8_MAX).to(STORAGE_TYPES["fp8"])
        return q.to(device), scale.to(device)
    return t.detach().to(device=device, dtype=STORAGE_TYPES[kind], copy=True), None


def _dequantize(t: torch.Tensor, scale: torch.Tensor | None, dtype, device, non_blocking=False) -> torch.Tensor:
    t = t.to(device, non_blocking=non_blocking)
    if scale is not None:
        return t.to(torch.float32) * scale.to(device, non_blocking=non_blocking)
    return t.to(dtype)


@dataclass
class KVStore:
    """Keys/values of background tokens, per (step, block)."""

    storage: str = "bf16"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    entries: dict = field(default_factory=dict)
    peak_bytes: int = 0
    _prefetched: dict = field(default_factory=dict, repr=False)
    _order: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        storage_dtype(self.storage)
        self.device = torch.device(self.device)

    # -- recording ---------------------------------------------------------------------
    def put(self, step: int, block: tuple[str, int], k: torch.Tensor, v: torch.Tensor) -> None:
        if k.shape != v.shape or k.ndim != 4:
            raise KVStoreError(f"keys/values must be [B, heads, tokens, dim] of equal shape, got "
                               f"{tuple(k.shape)} and {tuple(v.shape)}")
        pin = self.device.type == "cpu" and k.is_cuda
        qk, sk = _quantize(k, self.storage, self.device)
        qv, sv = _quantize(v, self.storage, self.device)
        if pin:
            qk, qv = qk.pin_memory(), qv.pin_memory()
        key = (int(step), (str(block[0]), int(block[1])))
        if key not in self.entries:
            self._order.append(key)
        self.entries[key] = _Entry(qk, qv, sk, sv)
        self.peak_bytes = max(self.peak_bytes, self.nbytes())

    def drop_step(self, step: int) -> None:
        """Forget every entry of ``step`` (the inversion-free variant keeps one step only)."""
        for key in [k for k in self.entries if k[0] == step]:
            del self.entries[key]
            self._order.remove(key)
            self._prefetched.pop(key, None)

    # -- replay ------------------------------------------------------------------------
    def has(self, step: int, block: tuple[str, int]) -> bool:
        return (int(step), (str(block[0]), int(block[1]))) in self.entries

    def get(self, step: int, block: tuple[str, int], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one entry on ``device`` in ``dtype``."""
        key = (int(step), (str(block[0]), int(block[1])))
        if key not in self.entries:
            raise KVStoreError(f"no recorded keys/values for step {step}, {block[0]} block {block[1]}")
        device = torch.device(device)
        pre = self._prefetched.pop(key, None)
        if pre is not None and pre[0] == (device, dtype):
            stream_event, k, v = pre[1]
            current = torch.cuda.current_stream(device)
            current.wait_event(stream_event)
            k.record_stream(current)  # allocated on the side stream, used (and freed) on this one
            v.record_stream(current)
        else:
            e = self.entries[key]
            k = _dequantize(e.k, e.k_scale, dtype, device).to(dtype)
            v = _dequantize(e.v, e.v_scale, dtype, device).to(dtype)
        self._prefetch_next(key, device, dtype)
        return k, v

    def _prefetch_next(self, key, device, dtype) -> None:
        if device.type != "cuda" or self.device.type == "cuda":
            return
        try:
            nxt = self._order[self._order.index(key) + 1]
        except (ValueError, IndexError):
            return
        if nxt in self._prefetched:
            return
        e = self.entries[nxt]
        stream = _side_stream(device)
        with torch.cuda.stream(stream):
            k = _dequantize(e.k, e.k_scale, dtype, device, non_blocking=True).to(dtype)
            v = _dequantize(e.v, e.v_scale, dtype, device, non_blocking=True).to(dtype)
            event = torch.cuda.Event()
            event.record(stream)
        self._prefetched[nxt] = ((device, dtype), (event, k, v))

    # -- bookkeeping ---------------------------------------------------------------------
    def nbytes(self) -> int:
        return sum(e.nbytes() for e in self.entries.values())

    def token_count(self) -> int:
        first = next(iter(self.entries.values()), None)
        return 0 if first is None else first.k.shape[2]

    def steps(self) -> list[int]:
        return sorted({k[0] for k in self.entries})

    def blocks(self) -> list[tuple[str, int]]:
        return sorted({k[1] for k in self.entries})

    def converted(self, storage: str | None = None, device=None) -> "KVStore":
        """A copy in another storage type and/or on another device (the original is untouched)."""
        storage = storage or self.storage
        out = KVStore(storage=storage, device=device if device is not None else self.device)
        for key in self._order:
            e = self.entries[key]
            if storage == self.storage:
                out.entries[key] = _Entry(*(None if t is None else t.to(out.device, copy=True)
                                            for t in (e.k, e.v, e.k_scale, e.v_scale)))
                out._order.append(key)
            else:
                out.put(key[0], key[1], _dequantize(e.k, e.k_scale, torch.float32, e.k.device),
                        _dequantize(e.v, e.v_scale, torch.float32, e.v.device))
        out.peak_bytes = out.nbytes()
        return out

    # -- serialisation -------------------------------------------------------------------
    def to_tensors(self, prefix: str = "kv.") -> dict[str, torch.Tensor]:
        out = {}
        for key in self._order:
            e = self.entries[key]
            name = entry_key(*key)
            out[f"{prefix}k.{name}"] = e.k.contiguous().cpu()
            out[f"{prefix}v.{name}"] = e.v.contiguous().cpu()
            if e.k_scale is not None:
                out[f"{prefix}ks.{name}"] = e.k_scale.cpu()
                out[f"{prefix}vs.{name}"] = e.v_scale.cpu()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], storage: str, steps: list[int],
                     blocks: list[tuple[str, int]], shape: tuple[int, ...], device="cpu",
                     prefix: str = "kv.") -> "KVStore":
        """Rebuild a store, checking that exactly the expected entries exist with the expected
        shape and type. Raises :class:`KVStoreError` naming the first problem."""
        want_dtype = storage_dtype(storage)
        store = cls(storage=storage, device=device)
        expected = set()
        for step in steps:
            for block in blocks:
                name = entry_key(step, block)
                names = [f"{prefix}k.{name}", f"{prefix}v.{name}"]
                scales = [f"{prefix}ks.{name}", f"{prefix}vs.{name}"] if storage == "fp8" else []
                expected.update(names + scales)
                got = []
                for n in names:
                    t = tensors.get(n)
                    if t is None:
                        raise KVStoreError(f"missing tensor {n}")
                    if t.dtype != want_dtype:
                        raise KVStoreError(f"tensor {n} is {t.dtype}, expected {want_dtype} ({storage})")
                    if tuple(t.shape) != tuple(shape):
                        raise KVStoreError(f"tensor {n} has shape {tuple(t.shape)}, expected {tuple(shape)}")
                    got.append(t)
                sc = []
                for n in scales:
                    t = tensors.get(n)
                    if t is None or t.dtype != torch.float32 or t.numel() != 1:
                        raise KVStoreError(f"missing or malformed fp8 scale {n}")
                    sc.append(t)
                key = (int(step), (block[0], int(block[1])))
                store.entries[key] = _Entry(got[0].to(store.device), got[1].to(store.device),
                                            *(s.to(store.device) for s in sc)) if sc else \
                    _Entry(got[0].to(store.device), got[1].to(store.device))
                store._order.append(key)
        extra = sorted(n for n in tensors if n.startswith(prefix) and n not in expected)
        if extra:
            raise KVStoreError(f"unexpected tensors in the record: {extra[:5]}")
        store.peak_bytes = store.nbytes()
        return store


_STREAMS: dict = {}


def _side_stream(device):
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]


def bytes_per_token_step(blocks: int, hidden: int, storage: str) -> float:
    """Bytes stored per background token per step: keys and values of every block
    (fp8 scales are per tensor and do not grow with tokens)."""
    size = 1 if storage == "fp8" else torch.tensor([], dtype=storage_dtype(storage)).element_size()
    return 2 * blocks * hidden * size

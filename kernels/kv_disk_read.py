"""Reading key/value records from disk (the file format and its writer: :mod:`.kv_disk`).

:class:`RecordFile` opens a record and checks its header (every name, type, shape and offset,
the file's size) before anything else is read; :class:`DiskKVStore` streams its entries in use
order from a reader thread, at most ``depth`` ahead, with ``os.preadv`` into reused buffers and
a CRC check of every entry as it arrives.
"""
from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from collections import deque

import torch

from .kv_disk import _NAMES, DiskRecordError, _size, entry_name
from .kv_store import KVStore, KVStoreError, Replay, entry_key, entry_parts, norm_key, use_rank


class RecordFile:
    """A record file opened for reading: the header parsed and checked, nothing else read."""

    MAX_HEADER = 64 * 2**20

    def __init__(self, path: str):
        self.path = path
        name = os.path.basename(path)
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise DiskRecordError(f"the record file {path} does not exist (deleted or moved?)") from None
        try:
            st = os.fstat(self.fd)
            self.stat = (st.st_ino, st.st_size, st.st_mtime_ns)
            raw = os.pread(self.fd, 8, 0)
            if len(raw) < 8:
                raise DiskRecordError(f"cannot read {name} as a safetensors record: the file is truncated")
            (n,) = struct.unpack("<Q", raw)
            if n > self.MAX_HEADER or n + 8 > st.st_size:
                raise DiskRecordError(f"cannot read {name} as a safetensors record (header length {n} does "
                                      f"not fit a {st.st_size}-byte file); it may be truncated or another kind "
                                      f"of file")
            try:
                head = json.loads(os.pread(self.fd, n, 8).decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise DiskRecordError(f"cannot read {name} as a safetensors record (bad header); it may be "
                                      f"truncated or another kind of file") from None
            if not isinstance(head, dict):
                raise DiskRecordError(f"cannot read {name} as a safetensors record (bad header)")
            self.data_start = 8 + n
            self.metadata = head.pop("__metadata__", None) or {}
            self.tensors = {}
            spans = []
            for tname, info in head.items():
                try:
                    dtype = _NAMES[info["dtype"]]
                    shape = tuple(int(d) for d in info["shape"])
                    a, b = (int(x) for x in info["data_offsets"])
                except (KeyError, TypeError, ValueError):
                    raise DiskRecordError(f"{name}: tensor {tname!r} has a malformed or unsupported header "
                                          f"entry") from None
                if b - a != _size(dtype, shape) or a < 0:
                    raise DiskRecordError(f"{name}: tensor {tname!r} has offsets that do not fit its shape")
                self.tensors[tname] = (dtype, shape, a, b)
                spans.append((a, b))
            spans.sort()
            end = 0
            for a, b in spans:
                if a != end:
                    raise DiskRecordError(f"{name}: tensors overlap or leave gaps; not a valid safetensors file")
                end = b
            if self.data_start + end != st.st_size:
                raise DiskRecordError(f"cannot read {name} as a safetensors record: the file has "
                                      f"{st.st_size} bytes, its header describes {self.data_start + end}; it may "
                                      f"be truncated or was changed after writing")
            self.checksums = json.loads(self.metadata["checksums"]) if "checksums" in self.metadata else None
        except BaseException:
            os.close(self.fd)
            self.fd = None  # closed: __del__ must not close the number again (another file may have it)
            raise

    delete_on_close = False  # a scratch record (ComfyUI's temp folder): removed when no longer used

    def close(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None
        if self.delete_on_close:
            self.delete_on_close = False
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def check_unchanged(self) -> None:
        """The path still names the file that was opened, with the same size and time."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise DiskRecordError(f"the record file {self.path} no longer exists (deleted or moved); invert "
                                  f"again, or load it from where it is now") from None
        if (st.st_ino, st.st_size, st.st_mtime_ns) != self.stat:
            raise DiskRecordError(f"the record file {self.path} was changed or replaced after it was opened; "
                                  f"load it again")

    def _pread_into(self, buf: torch.Tensor, offset: int) -> None:
        mv = memoryview(buf.numpy())
        done = 0
        while done < len(mv):
            got = os.preadv(self.fd, [mv[done:]], self.data_start + offset + done)
            if got <= 0:
                raise DiskRecordError(f"the record file {self.path} ended early (changed after writing?)")
            done += got

    def _verify(self, name: str, buf: torch.Tensor) -> None:
        if self.checksums is None:
            return
        want = self.checksums.get(name)
        got = f"{zlib.crc32(memoryview(buf.numpy())) & 0xffffffff:08x}"
        if want != got:
            raise DiskRecordError(f"the record file {os.path.basename(self.path)} changed after it was written "
                                  f"({name} does not match its checksum); invert again")

    def read_tensor(self, name: str) -> torch.Tensor:
        dtype, shape, a, b = self.tensors[name]
        buf = torch.empty(b - a, dtype=torch.uint8)
        self._pread_into(buf, a)
        self._verify(name, buf)
        return buf.view(dtype).reshape(shape) if b > a else torch.empty(shape, dtype=dtype)

    def read_entry(self, key, ranges, pin: bool = False, buf: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The parts of one entry (views of ``buf`` when given); ``ranges`` is
        ``(start, end, [(part, tensor name)])``."""
        start, end, names = ranges
        if start is None:  # parts apart (version 1 files, no checksums)
            if self.checksums is not None:
                raise DiskRecordError(f"the record file {os.path.basename(self.path)} changed after it was "
                                      f"written (its layout was rewritten); invert again")
            return {part: self.read_tensor(name) for part, name in names}
        if buf is None or buf.numel() < end - start:
            buf = torch.empty(end - start, dtype=torch.uint8, pin_memory=pin)
        buf = buf[:end - start]
        self._pread_into(buf, start)
        self._verify(entry_name(key), buf)
        out = {}
        for part, name in names:
            dtype, shape, a, b = self.tensors[name]
            piece = buf[a - start:b - start]
            if (a - start) % torch.tensor([], dtype=dtype).element_size():
                piece = piece.clone()
            out[part] = piece.view(dtype).reshape(shape)
        return out


def entry_ranges(rf: RecordFile, storage: str, kv_shape, keys, prefix: str = "kv.") -> dict:
    """Check the entries' names, types and shapes against the layout and return where each lies:
    ``key -> (start, end, [(part, name)])`` with ``start = None`` when the parts are not adjacent
    (files written by :class:`RecordWriter` always have them adjacent; version 1 files need not)."""
    parts = entry_parts(storage, kv_shape)
    out = {}
    for key in keys:
        names, spans = [], []
        for part, dtype, shape in parts:
            name = f"{prefix}{part}.{entry_key(*key)}"
            info = rf.tensors.get(name)
            if info is None:
                raise KVStoreError(f"missing tensor {name}")
            if info[0] != dtype:
                raise KVStoreError(f"tensor {name} is {info[0]}, expected {dtype} ({storage})")
            if tuple(info[1]) != tuple(shape):
                raise KVStoreError(f"tensor {name} has shape {tuple(info[1])}, expected {tuple(shape)}")
            names.append((part, name))
            spans.append((info[2], info[3]))
        order = sorted(range(len(spans)), key=lambda i: spans[i][0])
        ok = all(spans[order[i]][1] == spans[order[i + 1]][0] for i in range(len(order) - 1))
        out[key] = (spans[order[0]][0] if ok else None, spans[order[-1]][1], names)
    return out


class DiskKVStore(Replay):
    """Keys/values streamed from a record file: a reader thread reads entries in use order,
    at most ``depth`` ahead of the one in use; :meth:`get` dequantises at use.

    ``wait_s`` sums the time :meth:`get` waited for the disk; ``bytes_read`` what was read."""

    def __init__(self, rf: RecordFile, storage: str, kv_shape, ranges: dict, depth: int = 4):
        self.rf, self.storage, self.kv_shape = rf, storage, tuple(kv_shape)
        self.entries = ranges
        self.device = torch.device("cpu")
        self.host_device = torch.device("cpu")
        self.depth = max(1, int(depth))
        self.pin = False
        self.wait_s = 0.0
        self.bytes_read = 0
        self.peak_bytes = 0
        self._lock = threading.Condition()
        self._ready: deque = deque()  # (key, parts or exception)
        self._plan: list = []         # keys the reader will read next
        self._generation = 0
        self._thread = None
        self._pool: list = []     # read buffers for reuse (CPU path)
        self._owner: dict = {}    # id(parts) -> the buffer they view

    @property
    def path(self) -> str:
        return self.rf.path

    def keys(self):
        return self.entries.keys()

    def has_key(self, key) -> bool:
        return key in self.entries

    def has(self, step, block) -> bool:
        return norm_key(step, block) in self.entries

    def steps(self) -> list[int]:
        return sorted({k[0] for k in self.entries})

    def blocks(self) -> list[tuple[str, int]]:
        return sorted({k[1] for k in self.entries})

    def nbytes(self) -> int:
        return sum(sum(self.rf.tensors[n][3] - self.rf.tensors[n][2] for _, n in names)
                   for _, _, names in self.entries.values())

    def token_count(self) -> int:
        return self.kv_shape[2] if self.entries else 0

    def entry_bytes(self) -> int:
        return max((sum(self.rf.tensors[n][3] - self.rf.tensors[n][2] for _, n in names)
                    for _, _, names in self.entries.values()), default=0)

    def _transfer(self, device):
        t = super()._transfer(device)
        if t is not None and device.type == "cuda":
            self.pin = True  # page-locked buffers, so the side stream's copies run asynchronously
        return t

    # -- reader thread
    def _run(self, generation: int) -> None:
        while True:
            with self._lock:
                while (generation == self._generation and
                       (not self._plan or len(self._ready) >= self.depth)):
                    self._lock.wait()
                if generation != self._generation:
                    return
                key = self._plan.pop(0)
            try:
                buf = None if self.pin else self._take_buffer()
                parts = self.rf.read_entry(key, self.entries[key], pin=self.pin, buf=buf)
                if buf is not None:
                    self._owner[id(parts)] = buf
            except BaseException as e:  # noqa: BLE001 - handed to the reader of this entry
                parts = e
            with self._lock:
                if generation != self._generation:
                    return
                self._ready.append((key, parts))
                held = sum(sum(t.numel() * t.element_size() for t in p.values()) for _, p in self._ready if isinstance(p, dict))
                self.peak_bytes = max(self.peak_bytes, held)
                self._lock.notify_all()

    def _restart(self, key) -> None:
        order = self.use_order()
        pos = self._use_order[1][key]
        self.stop()
        with self._lock:
            self._plan = list(order[pos:])
            self._lock.notify_all()
        self._thread = threading.Thread(target=self._run, args=(self._generation,), name="kv-record-reader",
                                        daemon=True)
        self._thread.start()

    def host_parts(self, key) -> dict[str, torch.Tensor]:
        with self._lock:
            head = self._ready[0][0] if self._ready else (self._plan[0] if self._plan else None)
        if head != key:
            self._restart(key)
        t0 = time.perf_counter()
        with self._lock:
            while not self._ready:
                self._lock.wait()
            got, parts = self._ready.popleft()
            self._lock.notify_all()
        self.wait_s += time.perf_counter() - t0
        if isinstance(parts, BaseException):
            self.stop()
            raise parts
        self.bytes_read += sum(t.numel() * t.element_size() for t in parts.values())
        return parts

    def _take_buffer(self) -> torch.Tensor:
        with self._lock:
            if self._pool:
                return self._pool.pop()
        return torch.empty(self.entry_bytes(), dtype=torch.uint8)

    def after_decode(self, parts, k, v):
        """Reuse the entry's read buffer (no allocation per block, so the heap does not
        fragment during an edit); keys/values that are views of it are copied first."""
        buf = self._owner.pop(id(parts), None)
        if buf is None:
            return k, v
        ptr = buf.untyped_storage().data_ptr()
        if k.untyped_storage().data_ptr() == ptr:
            k = k.clone()
        if v.untyped_storage().data_ptr() == ptr:
            v = v.clone()
        with self._lock:
            if len(self._pool) <= self.depth + 1:
                self._pool.append(buf)
        return k, v

    def stop(self) -> None:
        with self._lock:
            self._generation += 1
            self._ready.clear()
            self._plan = []
            self._owner.clear()
            self._lock.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # it finishes the entry it is reading, then sees the new generation

    def release(self) -> None:
        super().release()
        self.stop()

    def converted(self, storage: str | None = None, device=None) -> KVStore:
        """The keys/values read into memory (on ``device``), in another type if asked."""
        self.rf.check_unchanged()
        mem = KVStore(storage=self.storage, device=device if device is not None else "cpu")
        for key in sorted(self.entries, key=use_rank):
            mem.entries[key] = {p: t.to(mem.device) for p, t in self.rf.read_entry(key, self.entries[key]).items()}
        mem._orders_changed()
        mem.peak_bytes = mem.nbytes()
        return mem if storage in (None, self.storage) else mem.converted(storage)

    def begin(self) -> None:
        """Before an edit: the file is still there and unchanged."""
        self.rf.check_unchanged()

"""Key/value records that stream to and from disk.

A record file is an ordinary safetensors file (8-byte header length, JSON header, tensor
data; nothing is ever unpickled) laid out so that it can be written while the inversion runs
and read one (step, block) entry at a time:

* the whole layout is known before the inversion starts (storage type, key/value shape,
  recorded steps and blocks), so the header is written first and every entry goes straight
  to its offset when the model records it; memory does not grow with the record;
* entries lie in the order denoising reads them (steps ascending, double then single blocks),
  each one contiguous (``kv.k``, ``kv.v`` and scale parts), so an edit reads the file front
  to back;
* the metadata carries ``complete`` and a CRC-32 of every entry and small tensor. A record
  is written as ``<name>.partial`` (locked while written) and renamed only after its data,
  then its final header, reached the disk: a record interrupted while written is never
  offered, and a leftover ``.partial`` is removed by the next writer once its lock is free;
* readers check every name, type, shape and offset against the header before use, check
  the file's size, and verify each entry's CRC as it is read: a record whose file changed
  after writing is refused with a message that says so.

Writing (layout, writer, leftovers, free space) is here; reading is :mod:`.kv_disk_read`.
Reading uses ``os.preadv`` into fresh (pinned, for CUDA) buffers from a reader thread that
stays at most ``depth`` entries ahead. Unlike a memory map, whose touched pages count as the
process's resident memory until unmapped, this keeps the resident memory of an edit bounded
by the entries in flight; the kernel's page cache still serves repeated reads.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import struct
import threading
import zlib
from collections import deque
from dataclasses import dataclass

import torch

from .kv_store import KVStoreError, encode, entry_key, entry_parts, norm_key, use_rank

PARTIAL = ".partial"
RECORD_SUFFIX = ".bgkv.safetensors"  # = kv_record.FILE_SUFFIX (kv_record imports this module)
HEADER_ROOM = 4096  # spare header bytes, so the final metadata never moves the data

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.uint8: "U8",
           torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.float64: "F64"}
if getattr(torch, "float8_e4m3fn", None) is not None:
    _DTYPES[torch.float8_e4m3fn] = "F8_E4M3"
_NAMES = {v: k for k, v in _DTYPES.items()}


class DiskRecordError(KVStoreError):
    pass


def _size(dtype, shape) -> int:
    n = torch.tensor([], dtype=dtype).element_size()
    for d in shape:
        n *= int(d)
    return n


def entry_name(key) -> str:
    return "kv." + entry_key(*key)


@dataclass
class Layout:
    """Where every tensor of a record lies (offsets relative to the data start)."""

    tensors: dict      # name -> (dtype, shape, start, end)
    entries: dict      # key -> (start, end, [(part, name)])
    data_bytes: int

    @property
    def max_entry(self) -> int:
        return max((b - a for a, b, _ in self.entries.values()), default=0)

    @classmethod
    def build(cls, small: list, storage: str, kv_shape, keys) -> "Layout":
        tensors, entries, off = {}, {}, 0
        for name, dtype, shape in small:
            n = _size(dtype, shape)
            tensors[name] = (dtype, tuple(shape), off, off + n)
            off += n
        parts = entry_parts(storage, kv_shape) if keys else []
        for key in sorted((norm_key(*k) for k in keys), key=use_rank):
            start, names = off, []
            for part, dtype, shape in parts:
                name = f"kv.{part}.{entry_key(*key)}"
                n = _size(dtype, shape)
                tensors[name] = (dtype, tuple(shape), off, off + n)
                names.append((part, name))
                off += n
            entries[key] = (start, off, names)
        return cls(tensors, entries, off)

    def header_json(self, metadata: dict) -> bytes:
        head = {"__metadata__": metadata}
        for name, (dtype, shape, a, b) in self.tensors.items():
            head[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [a, b]}
        return json.dumps(head, separators=(",", ":")).encode()


def checked_names(layout: Layout) -> list[str]:
    """Names with a checksum: every entry, and every tensor that is not part of an entry."""
    return [entry_name(k) for k in layout.entries] + [n for n in layout.tensors if not n.startswith("kv.")]


def placeholder_metadata(layout: Layout, metadata: dict) -> dict:
    """The metadata of an unfinished record; the final one has the same length."""
    return dict(metadata, complete="0",
                checksums=json.dumps({n: "00000000" for n in checked_names(layout)}, separators=(",", ":")))


def record_bytes(layout: Layout, metadata: dict) -> int:
    """Size of the file on disk."""
    return 8 + _header_len(layout, placeholder_metadata(layout, metadata)) + layout.data_bytes


def _header_len(layout, metadata) -> int:
    n = len(layout.header_json(metadata)) + HEADER_ROOM
    return n + (-n % 8)


# -- writing -------------------------------------------------------------------------------------

def clean_stale_partials(folder: str) -> list[str]:
    """Remove ``*.bgkv.safetensors.partial`` records nobody is writing (left by a killed process);
    other ``.partial`` files in the folder are not ours and stay."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if not name.endswith(RECORD_SUFFIX + PARTIAL):
            continue
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a writer holds it
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def check_space(folder: str, need: int, margin: int = 256 * 2**20) -> None:
    os.makedirs(folder, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need + margin > free:
        raise DiskRecordError(f"the record needs {need / 2**30:.2f} GiB on disk in {folder} but only "
                              f"{free / 2**30:.2f} GiB are free")


class RecordWriter:
    """Writes a record's layout as its tensors arrive (from any order of steps); a writer
    thread does the I/O while the caller computes, with at most ``depth`` entries queued."""

    def __init__(self, path: str, layout: Layout, metadata: dict, depth: int = 4):
        self.path, self.layout = path, layout
        self.tmp = path + PARTIAL
        folder = os.path.dirname(os.path.abspath(path))
        clean_stale_partials(folder)
        meta = placeholder_metadata(layout, metadata)
        self._meta = metadata
        self.header_len = _header_len(layout, meta)
        self.total = 8 + self.header_len + layout.data_bytes
        check_space(folder, self.total)
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            try:
                os.posix_fallocate(self.fd, 0, self.total)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise DiskRecordError(f"the record needs {self.total / 2**30:.2f} GiB on disk in {folder}, "
                                          f"which is not free") from None
                os.ftruncate(self.fd, self.total)  # file systems without fallocate
            self._write_header(meta)
        except BaseException:
            self.abort()
            raise
        self.crc: dict[str, str] = {}
        self.written = set()
        self.error: BaseException | None = None
        self._queue: deque = deque()
        self._pool: list = []
        self._made = 0
        self._cv = threading.Condition()
        self.depth = max(1, int(depth))
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="kv-record-writer", daemon=True)
        self._thread.start()

    def _checked_names(self):
        return checked_names(self.layout)

    def _write_header(self, meta: dict) -> None:
        head = self.layout.header_json(meta)
        if len(head) > self.header_len:
            raise DiskRecordError("record header outgrew its room")
        data = memoryview(struct.pack("<Q", self.header_len) + head + b" " * (self.header_len - len(head)))
        done = 0
        while done < len(data):  # pwrite may write less than asked, like the data writes below
            done += os.pwrite(self.fd, data[done:], done)

    # -- producer side
    def _push(self, item) -> None:
        with self._cv:
            while len(self._queue) >= self.depth and self.error is None:
                self._cv.wait()
            if self.error is not None:
                raise self.error
            self._queue.append(item)
            self._cv.notify_all()

    def put(self, step, block, k: torch.Tensor, v: torch.Tensor, storage: str) -> None:
        key = norm_key(step, block)
        if key not in self.layout.entries:
            raise DiskRecordError(f"step {step}, {block[0]} block {block[1]} is not in the record's layout")
        self.put_parts(key, encode(k, v, storage))

    def put_parts(self, key, parts: dict[str, torch.Tensor]) -> None:
        """Queue one entry already encoded (:func:`~.kv_store.encode`)."""
        key = norm_key(*key)
        start, end, names = self.layout.entries[key]
        flats = [parts[p].contiguous().reshape(-1).view(torch.uint8) for p, _ in names]
        if sum(f.numel() for f in flats) != end - start:
            raise DiskRecordError(f"keys/values of {entry_key(*key)} do not fit the record's layout")
        buf = self._buffer(end - start, pin=parts["k"].is_cuda)
        off = 0
        for flat in flats:
            buf[off:off + flat.numel()].copy_(flat)
            off += flat.numel()
        self._push((entry_name(key), start, buf[:off], buf))

    def _buffer(self, nbytes: int, pin: bool) -> torch.Tensor:
        """One of ``depth`` reused staging buffers (no allocation per entry, so the heap does
        not fragment while the inversion runs)."""
        with self._cv:
            while not self._pool and self._made >= self.depth and self.error is None:
                self._cv.wait()
            if self.error is not None:
                raise self.error
            if self._pool:
                buf = self._pool.pop()
                if buf.numel() >= nbytes:
                    return buf
                self._made -= 1
            self._made += 1
        size = max(nbytes, self.layout.max_entry)
        return torch.empty(size, dtype=torch.uint8, pin_memory=pin and torch.cuda.is_available())

    def put_tensor(self, name: str, t: torch.Tensor) -> None:
        dtype, shape, a, b = self.layout.tensors[name]
        if t.dtype != dtype or tuple(t.shape) != tuple(shape):
            raise DiskRecordError(f"tensor {name} is {t.dtype} {tuple(t.shape)}, the layout says "
                                  f"{dtype} {tuple(shape)}")
        self._push((name, a, t.detach().contiguous().cpu().reshape(-1).view(torch.uint8), None))

    # -- writer thread
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue and self._closed:
                    return
                name, off, buf, pooled = self._queue[0]
            try:
                mv = memoryview(buf.numpy())
                pos = 8 + self.header_len + off
                done = 0
                while done < len(mv):
                    done += os.pwrite(self.fd, mv[done:], pos + done)
                self.crc[name] = f"{zlib.crc32(mv) & 0xffffffff:08x}"
                self.written.add(name)
            except BaseException as e:  # noqa: BLE001 - handed to the producer
                with self._cv:
                    self.error = e if not isinstance(e, OSError) or e.errno != errno.ENOSPC else \
                        DiskRecordError(f"the disk holding {self.tmp} is full")
                    self._queue.clear()
                    self._cv.notify_all()
                return
            with self._cv:
                self._queue.popleft()
                if pooled is not None:
                    self._pool.append(pooled)
                self._cv.notify_all()

    def _drain(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()

    def finish(self) -> str:
        """Flush, write the final header, rename; returns the record's path."""
        self._drain()
        if self.error is not None:
            self.abort()
            raise self.error
        missing = [n for n in self._checked_names() if n not in self.written]
        if missing:
            self.abort()
            raise DiskRecordError(f"the record lacks {len(missing)} tensors (e.g. {missing[0]}); it was not finished")
        os.fsync(self.fd)
        meta = dict(self._meta, complete="1",
                    checksums=json.dumps({n: self.crc[n] for n in self._checked_names()}, separators=(",", ":")))
        self._write_header(meta)
        os.fsync(self.fd)
        os.replace(self.tmp, self.path)
        try:
            dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        return self.path

    def abort(self) -> None:
        """Stop and delete the unfinished file."""
        if getattr(self, "_thread", None) is not None and self._thread.is_alive():
            with self._cv:
                self._queue.clear()
            self._drain()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


# -- reading -------------------------------------------------------------------------------------

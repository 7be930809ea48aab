"""A KV-Edit background record: the data KVInvert produces and KVEditSampler consumes,
and its safetensors file format.

A record's keys/values live in memory (:class:`~.kv_store.KVStore`, CPU or compute device)
or stay in their file and stream from it (:class:`~.kv_disk_read.DiskKVStore`);
:class:`DiskRecordSink` writes a record to disk while the inversion runs.

File layout (safetensors, never pickle; written by :mod:`.kv_disk`): tensors ``trajectory`` (float32
``[N+1, B, C, h, w]``, model space, index ``i`` at sigma ``s_i``), ``source_latent``
(the user's latent, bit-exact), ``latent_mask`` / ``token_mask`` (uint8), ``sigmas``
(float32 ``[N+1]``) and the key/value entries of :class:`~.kv_store.KVStore`
(``kv.k.<step>.<block type>.<block index>``...). The metadata holds ``format``,
``version`` and a JSON ``header`` with the storage type, recorded steps and blocks, the
key/value shape and the fingerprint (model, latent size, mask, steps, sigmas); version 2 adds
``complete`` and per-entry CRC-32 ``checksums`` (version 1 files, written whole, still load).

Loading checks every tensor's presence, shape and type against the header before
anything is used, and reports the first problem in plain words.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from .kv_disk import DiskRecordError, Layout, RecordWriter, entry_name, record_bytes
from .kv_disk_read import DiskKVStore, RecordFile, entry_ranges
from .kv_store import KVStore, KVStoreError, STORAGE_TYPES

FORMAT = "comfyui-precise-edit/background-kv"
VERSION = "2"
READABLE = ("1", "2")
FILE_SUFFIX = ".bgkv.safetensors"


class RecordError(ValueError):
    pass


def _check_finite(tensors: dict, what: str) -> None:
    """``what`` names the tensors (``{name}`` is replaced by each tensor's name)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t.float() if t.element_size() == 1 else t).all()):
            raise RecordError(f"{what.format(name=name)} holds NaN or infinite values; the file is damaged, "
                              f"invert again")


def mask_digest(latent_mask: torch.Tensor) -> str:
    m = latent_mask.to(torch.uint8).cpu().contiguous()
    return hashlib.sha256(str(tuple(m.shape)).encode() + m.numpy().tobytes()).hexdigest()[:16]


def sigmas_digest(sigmas: torch.Tensor) -> str:
    vals = [round(float(s), 6) for s in sigmas.flatten()]
    return hashlib.sha256(json.dumps(vals).encode()).hexdigest()[:16]


@dataclass
class BackgroundRecord:
    store: KVStore
    trajectory: torch.Tensor      # [N+1, B, C, h, w] float32, model space
    source_latent: torch.Tensor   # user space, as given
    latent_mask: torch.Tensor     # bool [B, h, w]
    token_mask: torch.Tensor      # bool [B, th, tw]
    sigmas: torch.Tensor          # float32 [N+1], descending, s_N = 0
    fingerprint: dict             # model, latent_shape, mask, steps, sigmas
    kv_shape: tuple = ()          # [B, heads, background tokens, head_dim]
    blocks: list = field(default_factory=list)
    mask_guided: bool = False
    info: dict = field(default_factory=dict)
    all_tokens: bool = False      # keys/values of every image token (any mask can be painted later)

    @property
    def steps(self) -> int:
        return int(self.sigmas.numel()) - 1

    @property
    def background_tokens(self) -> int:
        return int((~self.token_mask.reshape(self.token_mask.shape[0], -1)).sum(dim=1)[0])

    @property
    def total_tokens(self) -> int:
        return int(self.token_mask[0].numel())

    @property
    def recorded_tokens(self) -> torch.Tensor:
        """Image-token indices whose keys/values the store holds, ascending (store order)."""
        flat = self.token_mask.reshape(self.token_mask.shape[0], -1)[0]
        return torch.arange(flat.numel()) if self.all_tokens else (~flat).nonzero().flatten()

    def nbytes(self) -> int:
        return self.store.nbytes() + self.trajectory.numel() * self.trajectory.element_size()

    def mismatches(self, model: str | None = None, latent_shape=None, latent_mask=None, steps=None,
                   sigmas=None) -> list[str]:
        """What differs between this record and the given edit; empty when it fits."""
        fp = self.fingerprint
        out = []
        if model is not None and model != fp["model"]:
            out.append("model (the record was made with other weights, LoRAs or model type)")
        if latent_shape is not None and list(latent_shape) != list(fp["latent_shape"]):
            out.append(f"latent size ({list(latent_shape)} here, {fp['latent_shape']} in the record)")
        if latent_mask is not None and mask_digest(latent_mask) != fp["mask"]:
            out.append("mask (a different region was painted)")
        if steps is not None and int(steps) != int(fp["steps"]):
            out.append(f"step count ({steps} here, {fp['steps']} in the record)")
        if sigmas is not None:
            n = int(sigmas.numel()) - 1
            if n != int(fp["steps"]) and steps is None:
                out.append(f"step count ({n} here, {fp['steps']} in the record)")
            elif sigmas_digest(sigmas) != fp["sigmas"]:
                out.append("sigma schedule (other scheduler, shift or denoise)")
        return out

    def converted(self, storage: str | None = None, device=None) -> "BackgroundRecord":
        """A copy with the keys/values in another storage type or on another device."""
        return BackgroundRecord(
            store=self.store.converted(storage, device), trajectory=self.trajectory,
            source_latent=self.source_latent, latent_mask=self.latent_mask, token_mask=self.token_mask,
            sigmas=self.sigmas, fingerprint=dict(self.fingerprint), kv_shape=self.kv_shape,
            blocks=list(self.blocks), mask_guided=self.mask_guided, info=dict(self.info),
            all_tokens=self.all_tokens)

    # -- files -----------------------------------------------------------------------------
    def header(self) -> dict:
        return {"storage": self.store.storage, "steps": self.store.steps(),
                "blocks": [list(b) for b in self.blocks], "kv_shape": list(self.kv_shape),
                "fingerprint": self.fingerprint, "mask_guided": self.mask_guided, "info": self.info,
                "all_tokens": self.all_tokens,
                "trajectory_shape": list(self.trajectory.shape),
                "source_shape": list(self.source_latent.shape),
                "source_dtype": str(self.source_latent.dtype).replace("torch.", "")}

    def small_tensors(self) -> dict[str, torch.Tensor]:
        return {"trajectory": self.trajectory.float().contiguous().cpu(),
                "source_latent": self.source_latent.contiguous().cpu(),
                "latent_mask": self.latent_mask.to(torch.uint8).contiguous().cpu(),
                "token_mask": self.token_mask.to(torch.uint8).contiguous().cpu(),
                "sigmas": self.sigmas.float().contiguous().cpu()}

    def save(self, path: str) -> None:
        """Write the record (streamed records are copied entry by entry)."""
        small = self.small_tensors()
        keys = list(self.store.keys())
        layout = Layout.build([(n, t.dtype, tuple(t.shape)) for n, t in small.items()], self.store.storage,
                              self.kv_shape, keys)
        writer = RecordWriter(path, layout, {"format": FORMAT, "version": VERSION,
                                             "header": json.dumps(self.header())})
        try:
            for key in self.store.use_order() if keys else []:
                parts = self.store.host_parts(key)
                start, end, names = layout.entries[key]
                buf = torch.cat([parts[p].contiguous().cpu().reshape(-1).view(torch.uint8) for p, _ in names])
                if buf.numel() != end - start:
                    raise RecordError(f"keys/values of step {key[0]} do not fit the record's shape {self.kv_shape}")
                writer._push((entry_name(key), start, buf, None))
            for n, t in small.items():
                writer.put_tensor(n, t)
        except BaseException:
            writer.abort()
            raise
        finally:
            if isinstance(self.store, DiskKVStore):
                self.store.stop()
        writer.finish()

    def place(self) -> str:
        if isinstance(self.store, DiskKVStore):
            return "disk"
        return "cpu" if self.store.device.type == "cpu" else "compute device"

    @classmethod
    def load(cls, path: str, device="cpu", storage: str | None = None, stream: bool = False,
             depth: int = 4) -> "BackgroundRecord":
        """Open a record file; ``stream`` keeps the keys/values in the file (read block by block
        while editing), otherwise they are read into memory on ``device``."""
        name = os.path.basename(path)
        try:
            rf = RecordFile(path)
        except DiskRecordError as e:
            raise RecordError(str(e)) from None
        keep = False
        try:
            meta = rf.metadata
            if meta.get("format") != FORMAT:
                raise RecordError("this safetensors file is not a background key/value record "
                                  "(saved by BackgroundKVCache)")
            if meta.get("version") not in READABLE:
                raise RecordError(f"record format version {meta.get('version')!r} is not supported "
                                  f"(expected one of {list(READABLE)})")
            if meta.get("version") != "1" and (meta.get("complete") != "1" or rf.checksums is None):
                raise RecordError(f"{name} was not finished (the inversion writing it was interrupted); "
                                  f"invert again")
            try:
                header = json.loads(meta["header"])
                rec = cls._from_file(header, rf, device, stream, depth)
            except RecordError:
                raise
            except DiskRecordError as e:
                raise RecordError(str(e)) from None
            except (KeyError, TypeError, ValueError, KVStoreError) as e:
                raise RecordError(f"{name} is not a valid record: {e}") from None
            keep = stream
        finally:
            if not keep:
                rf.close()
        if storage and storage != rec.store.storage:
            rec = rec.converted(storage=storage, device=device)
        return rec

    @classmethod
    def _from_file(cls, header: dict, rf: RecordFile, device, stream: bool, depth: int) -> "BackgroundRecord":
        known = ("trajectory", "source_latent", "latent_mask", "token_mask", "sigmas")
        unknown = sorted(k for k in rf.tensors if k not in known and not k.startswith("kv."))
        if unknown:
            raise RecordError(f"unknown tensors {unknown[:5]}")
        small = {n: rf.read_tensor(n) for n in known if n in rf.tensors}
        # NaN/inf checks (kvfid's load check, adapted to streamed stores): the trajectory and
        # source latent are checked here; entries read into memory are checked as they are read
        # below; streamed entries are NOT scanned at load (that would read the whole file) -- each
        # block is verified against its per-entry CRC-32 checksum when the edit reads it, and the
        # record was checked finite when it was written (KVInvert refuses a non-finite inversion).
        _check_finite({n: small[n] for n in ("trajectory", "source_latent") if n in small}, "the record's {name}")

        def make_store(stored, kv_shape, steps, blocks):
            keys = [(st, b) for st in steps for b in blocks] if kv_shape[2] > 0 else []
            ranges = entry_ranges(rf, stored, kv_shape, keys) if keys else {}
            expected = {n for _, _, names in ranges.values() for _, n in names}
            extra = sorted(n for n in rf.tensors if n.startswith("kv.") and n not in expected)
            if extra:
                if not keys:
                    raise RecordError("a record without background tokens holds keys/values")
                raise KVStoreError(f"unexpected tensors in the record: {extra[:5]}")
            if stream:
                return DiskKVStore(rf, stored, kv_shape, ranges, depth=depth)
            store = KVStore(storage=stored, device=device)
            for key in ranges:
                parts = rf.read_entry(key, ranges[key])
                _check_finite(parts, f"the record's keys/values (step {key[0]}, {key[1][0]} block {key[1][1]})")
                store.entries[key] = {p: t.to(store.device) for p, t in parts.items()}
            store._orders_changed()
            store.peak_bytes = store.nbytes()
            return store

        return cls._from_parts(header, small, make_store)

    @classmethod
    def _from_parts(cls, header: dict, tensors: dict, make_store) -> "BackgroundRecord":
        def need(name, dtype, shape=None):
            t = tensors.get(name)
            if t is None:
                raise RecordError(f"missing tensor {name!r}")
            if t.dtype != dtype:
                raise RecordError(f"tensor {name!r} is {t.dtype}, expected {dtype}")
            if shape is not None and list(t.shape) != list(shape):
                raise RecordError(f"tensor {name!r} has shape {list(t.shape)}, expected {list(shape)}")
            return t

        stored = header["storage"]
        if stored not in STORAGE_TYPES:
            raise RecordError(f"unknown storage type {stored!r}")
        fp = header["fingerprint"]
        for key in ("model", "latent_shape", "mask", "steps", "sigmas"):
            if key not in fp:
                raise RecordError(f"fingerprint lacks {key!r}")
        n = int(fp["steps"])
        latent_shape = [int(d) for d in fp["latent_shape"]]
        if len(latent_shape) != 4 or n < 1:
            raise RecordError(f"bad latent shape {latent_shape} or step count {n}")
        B, _, h, w = latent_shape
        traj = need("trajectory", torch.float32, [n + 1] + latent_shape)
        src_dtype = getattr(torch, header.get("source_dtype", "float32"), None)
        if not isinstance(src_dtype, torch.dtype):
            raise RecordError("bad source latent type")
        source = need("source_latent", src_dtype, latent_shape)
        lmask = need("latent_mask", torch.uint8, [B, h, w]).bool()
        th, tw = -(-h // 2), -(-w // 2)
        tmask = need("token_mask", torch.uint8, [B, th, tw]).bool()
        sigmas = need("sigmas", torch.float32, [n + 1])
        if mask_digest(lmask) != fp["mask"] or sigmas_digest(sigmas) != fp["sigmas"]:
            raise RecordError("the masks or sigmas do not match the record's fingerprint (file altered?)")
        kv_shape = [int(d) for d in header["kv_shape"]]
        all_tokens = bool(header.get("all_tokens", False))
        n_bg = th * tw if all_tokens else int((~tmask.reshape(B, -1)).sum(dim=1)[0])
        if len(kv_shape) != 4 or kv_shape[2] != n_bg:
            raise RecordError(f"key/value shape {kv_shape} does not fit {n_bg} "
                              f"{'image' if all_tokens else 'background'} tokens")
        blocks = [(str(b[0]), int(b[1])) for b in header["blocks"]]
        steps = [int(s) for s in header["steps"]]
        if any(s < 0 or s >= n for s in steps):
            raise RecordError(f"recorded steps {steps} outside 0..{n - 1}")
        store = make_store(stored, kv_shape, steps, blocks)
        return cls(store=store, trajectory=traj, source_latent=source, latent_mask=lmask, token_mask=tmask,
                   sigmas=sigmas, fingerprint=fp, kv_shape=tuple(kv_shape), blocks=blocks,
                   mask_guided=bool(header.get("mask_guided", False)), info=dict(header.get("info", {})),
                   all_tokens=all_tokens)


class DiskRecordSink:
    """Where :func:`invert` puts keys/values when the record goes to disk: each entry is
    encoded and written to its place in ``path`` as it arrives (a writer thread, at most
    ``depth`` entries queued), so the inversion's memory does not grow with the record.
    :meth:`finish` writes the trajectory and returns the record, streamed from the file."""

    def __init__(self, path: str, record: BackgroundRecord, steps: list[int], depth: int = 4):
        self.record, self.path = record, path
        self.storage = record.store.storage
        self.keys = [(int(st), b) for st in steps for b in record.blocks] if record.kv_shape[2] > 0 else []
        small = record.small_tensors()
        self.small = small
        self.layout = Layout.build([(n, t.dtype, tuple(t.shape)) for n, t in small.items()], self.storage,
                                   record.kv_shape, self.keys)
        self.header = dict(record.header(), steps=sorted({k[0] for k in self.keys}))
        self.meta = {"format": FORMAT, "version": VERSION, "header": json.dumps(self.header)}
        self.writer = None
        self.depth = depth

    def nbytes(self) -> int:
        """Size of the file."""
        return record_bytes(self.layout, self.meta)

    def open(self) -> "DiskRecordSink":
        self.writer = RecordWriter(self.path, self.layout, self.meta, depth=self.depth)
        return self

    def put(self, step, block, k, v) -> None:
        self.writer.put(step, block, k, v, self.storage)

    def finish(self, trajectory: torch.Tensor, depth: int = 4) -> BackgroundRecord:
        try:
            for n, t in self.small.items():
                self.writer.put_tensor(n, trajectory.float().contiguous().cpu() if n == "trajectory" else t)
        except BaseException:
            self.writer.abort()
            raise
        self.writer.finish()
        return BackgroundRecord.load(self.path, stream=True, depth=depth)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()

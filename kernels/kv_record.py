"""A KV-Edit background record: the data KVInvert produces and KVEditSampler consumes,
and its safetensors file format.

File layout (safetensors, never pickle): tensors ``trajectory`` (float32
``[N+1, B, C, h, w]``, model space, index ``i`` at sigma ``s_i``), ``source_latent``
(the user's latent, bit-exact), ``latent_mask`` / ``token_mask`` (uint8), ``sigmas``
(float32 ``[N+1]``) and the key/value entries of :class:`~.kv_store.KVStore`
(``kv.k.<step>.<block type>.<block index>``...). The metadata holds ``format``,
``version`` and a JSON ``header`` with the storage type, recorded steps and blocks, the
key/value shape and the fingerprint (model, latent size, mask, steps, sigmas).

Loading checks every tensor's presence, shape and type against the header before
anything is used, and reports the first problem in plain words.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from .kv_store import KVStore, KVStoreError, STORAGE_TYPES

FORMAT = "comfyui-precise-edit/background-kv"
VERSION = "1"
FILE_SUFFIX = ".bgkv.safetensors"


class RecordError(ValueError):
    pass


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

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        tensors = {
            "trajectory": self.trajectory.float().contiguous().cpu(),
            "source_latent": self.source_latent.contiguous().cpu(),
            "latent_mask": self.latent_mask.to(torch.uint8).contiguous().cpu(),
            "token_mask": self.token_mask.to(torch.uint8).contiguous().cpu(),
            "sigmas": self.sigmas.float().contiguous().cpu(),
            **self.store.to_tensors(),
        }
        tmp = path + ".partial"
        save_file(tensors, tmp, metadata={"format": FORMAT, "version": VERSION,
                                          "header": json.dumps(self.header())})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, device="cpu", storage: str | None = None) -> "BackgroundRecord":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise RecordError("this safetensors file is not a background key/value record "
                                      "(saved by BackgroundKVCache)")
                if meta.get("version") != VERSION:
                    raise RecordError(f"record format version {meta.get('version')!r} is not supported "
                                      f"(expected {VERSION})")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except RecordError:
            raise
        except Exception as e:  # safetensors raises its own types for truncated/non-safetensors files
            raise RecordError(f"cannot read {os.path.basename(path)} as a safetensors record "
                              f"({type(e).__name__}: {e}); it may be truncated or another kind of file") from None
        try:
            header = json.loads(meta["header"])
            return cls._from_parts(header, tensors, device, storage)
        except (KeyError, TypeError, ValueError, KVStoreError) as e:
            if isinstance(e, RecordError):
                raise
            raise RecordError(f"{os.path.basename(path)} is not a valid record: {e}") from None

    @classmethod
    def _from_parts(cls, header: dict, tensors: dict, device, storage) -> "BackgroundRecord":
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
        known = {"trajectory", "source_latent", "latent_mask", "token_mask", "sigmas"}
        unknown = sorted(k for k in tensors if k not in known and not k.startswith("kv."))
        if unknown:
            raise RecordError(f"unknown tensors {unknown[:5]}")
        if n_bg > 0:
            store = KVStore.from_tensors(tensors, stored, steps, blocks, kv_shape, device=device)
        else:
            if any(k.startswith("kv.") for k in tensors):
                raise RecordError("a record without background tokens holds keys/values")
            store = KVStore(storage=stored, device=device)
        rec = cls(store=store, trajectory=traj, source_latent=source, latent_mask=lmask, token_mask=tmask,
                  sigmas=sigmas, fingerprint=fp, kv_shape=tuple(kv_shape), blocks=blocks,
                  mask_guided=bool(header.get("mask_guided", False)), info=dict(header.get("info", {})),
                  all_tokens=all_tokens)
        if storage and storage != stored:
            rec = rec.converted(storage=storage)
        return rec

"""What every training command shares: ComfyUI set-up on CPU, seeds, weight paths, saving, loading.

The weights live in ``synthetic/weights/`` and ship with the repository; ``scripts/train_synthetic.py
<model>`` recreates each one and refuses to overwrite a shipped file unless given ``--force``.

How a file is stored (``STORAGE``, the file's ``storage`` metadata; ``load`` gives back ComfyUI's own
state dict either way, and ``scripts/train_synthetic.py <model> --export PATH`` writes that as a plain file):

- ``fp16``: every tensor as it is, in fp16 (the FLUX-side models).
- ``trimmed``: lossless for zero-padded networks (the VAEs: narrow networks written into TAESD's
  64-wide layout, 87 % of it exact zeros). Each tensor keeps the leading block that holds all its
  non-zero values; an all-zero tensor is left out; the metadata ``shapes`` gives the full shapes.
  Expanding restores the fp16 file bit for bit.
- ``int8``: weights of two or more dimensions as int8 with one fp32 scale per output row
  (``<key>.int8_scale``: symmetric, max |w| of the row / 127), everything else fp16 (the UNets). Not
  lossless: the models are measured as stored.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

WEIGHTS = Path(__file__).resolve().parent / "weights"
FILES = {
    "vae16": "taesd16_synthetic.safetensors",
    "vae4": "taesd4_synthetic.safetensors",
    "sd": "sd_unet_synthetic.safetensors",
    "ip2p": "ip2p_unet_synthetic.safetensors",
    "flux": "flux_synthetic.safetensors",
    "kontext": "flux_kontext_synthetic.safetensors",
}
COMMAND = "python scripts/train_synthetic.py {name}"
STORAGE = {"vae16": "trimmed", "vae4": "trimmed", "sd": "int8", "ip2p": "int8", "flux": "fp16", "kontext": "fp16"}
SCALE_SUFFIX = ".int8_scale"
STORAGE_META = ("storage", "shapes")     # the metadata keys the storage writes (a trainer's own may not use them)


class MissingWeights(FileNotFoundError):
    pass


def weight_path(name: str, must_exist: bool = True) -> Path:
    path = WEIGHTS / FILES[name]
    if must_exist and not path.is_file():
        raise MissingWeights(f"synthetic model '{name}': {path} is missing; recreate it with "
                             f"`{COMMAND.format(name=name)}` (COMFYUI_PATH set to a ComfyUI checkout)")
    return path


def setup_comfy(threads: int = 1) -> None:
    """Import ComfyUI from COMFYUI_PATH, on CPU, and fix the thread count (results depend on it)."""
    root = os.environ.get("COMFYUI_PATH")
    if root and root not in sys.path:
        sys.path.insert(0, root)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True
    torch.set_num_threads(threads)


def trim(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """The ``trimmed`` form: each tensor's leading block holding all its non-zero values (all-zero
    tensors left out) and every tensor's full shape."""
    out, shapes = {}, {}
    for k, v in tensors.items():
        shapes[k] = list(v.shape)
        nz = ((v != 0) | torch.signbit(v)).nonzero()      # -0.0 is kept as it is
        if len(nz):
            out[k] = v[tuple(slice(0, int(e) + 1) for e in nz.max(0).values)].contiguous()
    return out, shapes


def untrim(tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    dtype = next(iter(tensors.values())).dtype if tensors else torch.float16
    out = {}
    for k, shape in shapes.items():
        full = torch.zeros(shape, dtype=dtype)
        if k in tensors:
            full[tuple(slice(0, n) for n in tensors[k].shape)] = tensors[k]
        out[k] = full
    return out


def quantize(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``int8`` form: weights of two or more dimensions as int8, one fp32 scale per output row
    (symmetric: the row's max |w| / 127); everything else fp16."""
    out = {}
    for k, v in tensors.items():
        if k.endswith(SCALE_SUFFIX):
            raise ValueError(f"int8 storage: key '{k}' ends in '{SCALE_SUFFIX}', the suffix of its scales")
        v = v.detach().float()
        if v.ndim < 2:
            out[k] = v.half()
            continue
        rows = v.reshape(v.shape[0], -1)
        scale = rows.abs().amax(1).clamp_min(1e-12) / 127.0
        out[k] = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(v.shape)
        out[k + SCALE_SUFFIX] = scale
    return out


def dequantize(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in tensors.items():
        if k.endswith(SCALE_SUFFIX) and k[:-len(SCALE_SUFFIX)] in tensors:
            continue
        if v.dtype == torch.int8:
            scale = tensors[k + SCALE_SUFFIX]
            v = (v.float().reshape(v.shape[0], -1) * scale[:, None]).reshape(v.shape)
        out[k] = v
    return out


def stored(name: str, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What ``save`` writes for ``name``: (tensors, storage metadata)."""
    kind = STORAGE.get(name, "fp16")
    if kind == "int8":
        return {k: v.contiguous() for k, v in quantize(tensors).items()}, {"storage": kind}
    half = {k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}
    if kind == "trimmed":
        small, shapes = trim(half)
        return small, {"storage": kind, "shapes": json.dumps(shapes)}
    return half, {"storage": kind}


def save(name: str, tensors: dict[str, torch.Tensor], force: bool, metadata: dict | None = None) -> Path:
    """Write ``tensors`` (ComfyUI's state dict of the model) to the shipped file, in the model's
    storage (``STORAGE``)."""
    from safetensors.torch import save_file

    path = weight_path(name, must_exist=False)
    if path.exists() and not force:
        raise SystemExit(f"{path} exists (shipped weights); pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    small, meta = stored(name, tensors)
    clash = set(meta) & set(metadata or {})
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are the storage's own")
    save_file(small, str(path), metadata={**{k: str(v) for k, v in (metadata or {}).items()}, **meta})
    return path


def read(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """ComfyUI's state dict from a weight file in any ``STORAGE`` form (a file without the
    ``storage`` key is plain), and the file's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    kind = meta.get("storage", "fp16")
    if kind == "trimmed":
        tensors = untrim(tensors, json.loads(meta["shapes"]))
    elif kind == "int8":
        tensors = dequantize(tensors)
    elif kind != "fp16":
        raise ValueError(f"{path}: unknown storage '{kind}' (this code reads fp16, trimmed, int8)")
    return tensors, meta


def load(name: str) -> dict[str, torch.Tensor]:
    """The shipped model ``name`` as ComfyUI's state dict (a missing file names its command)."""
    return read(weight_path(name))[0]


def export(name: str, out, force: bool = False) -> Path:
    """Write the shipped model ``name`` to ``out`` as a plain fp16 safetensors file in ComfyUI's
    layout (a VAE: the TAESD-layout file ComfyUI's Load VAE reads). Refuses to overwrite a file
    unless ``force``, and never writes over a shipped file."""
    from safetensors.torch import save_file

    as_dir = str(out).endswith(("/", os.sep))
    out = Path(out).expanduser()
    if as_dir or out.is_dir() or out.suffix not in (".safetensors", ".sft"):   # a folder (what ComfyUI lists)
        out = out / FILES[name]
    if out.resolve().parent == WEIGHTS.resolve():
        raise ValueError(f"{out} is in the shipped weights folder; export elsewhere (e.g. ComfyUI/models/vae)")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    tensors, meta = read(weight_path(name))
    meta = {k: v for k, v in meta.items() if k not in STORAGE_META}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(out), metadata=meta)
    return out


def check_writable(name: str, force: bool) -> None:
    """Refuse before training rather than after."""
    path = weight_path(name, must_exist=False)
    if path.exists() and not force:
        raise SystemExit(f"{path} exists (shipped weights); pass --force to overwrite it")


def optimise(loss, opt, sched, params, ema, step: int, steps: int, label: str, t0: float):
    """One optimiser step (gradient clipped to norm 1) and the running loss, printed every 50 steps."""
    import time

    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
    if step % 50 == 0 or step == steps - 1:
        print(f"{label} step {step} loss {ema:.4f} ({time.time() - t0:.0f}s)", flush=True)
    return ema

"""Which weights a KV-Edit record was made with.

A record's keys/values are only valid for the weights that produced them, so KVInvert
stores a fingerprint of the model and every edit compares it with its own model. The
fingerprint covers

* the model class and its configuration;
* every tensor of the diffusion model: name, shape, dtype and a fixed strided sample of
  ``SAMPLES`` elements (first element, then evenly spaced), read as raw bytes;
* every patch (LoRAs, ModelMergeSimple, ...): the patched key, strengths, offset and
  function, and a strided sample of every tensor the patch holds (a LoRA's up/down
  matrices, a merge's second model weight, ...);
* the attention and block patches and block replacements in ``transformer_options``: each
  function's name and what it carries (closure values, defaults, a callable object's plain
  attributes; see ``_state``), so one patch function at two strengths differs.

ComfyUI writes patches into the weights in place while a model is loaded and keeps the
originals in the patcher's ``backup`` (shared by all clones of one model); the base weights
are read from that backup when present, so the fingerprint is the same whether or not the
model (or a clone of it) is loaded at the moment.

Anything that cannot be sampled raises :class:`FingerprintError`; the fingerprint never
silently falls back to a weaker one.
"""
from __future__ import annotations

import functools
import hashlib
import json
import types

import torch

SAMPLES = 512
_MAX_DEPTH = 12


class FingerprintError(ValueError):
    pass


def _raw_sample(t: torch.Tensor, n: int = SAMPLES) -> torch.Tensor:
    """Up to ``n`` evenly strided elements of ``t`` as CPU bytes (uint8)."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        # wrapper subclasses (quantised layouts): sample every inner tensor
        names, _ = t.__tensor_flatten__()
        return torch.cat([_raw_sample(getattr(t, name), n) for name in names]) if names else \
            torch.zeros(0, dtype=torch.uint8)
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        t = t.as_subclass(torch.Tensor)  # e.g. GGUF tensors: the raw quantised data
    flat = t.detach().reshape(-1)
    count = flat.numel()
    if count == 0:
        return torch.zeros(0, dtype=torch.uint8)
    if count > n:
        idx = torch.div(torch.arange(n, device=flat.device) * count, n, rounding_mode="floor")
        flat = flat[idx]
    sample = flat.cpu().contiguous()
    if sample.dtype == torch.bool:
        sample = sample.to(torch.uint8)
    return sample.view(torch.uint8)


def _tensor(h, t: torch.Tensor) -> None:
    h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
    h.update(_raw_sample(t).numpy().tobytes())


def _plain_or_container(h, obj, depth: int, again, max_items: int | None = None) -> bool:
    """Hash a tensor (by sample), a plain value or a container (its elements through ``again``, the
    caller's own walker) and say so; False for anything else, left to the caller."""
    if isinstance(obj, torch.Tensor):
        _tensor(h, obj)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(repr(obj).encode())
    elif isinstance(obj, (list, tuple)):
        h.update(f"[{len(obj)}".encode())
        for item in obj[:max_items]:
            again(h, item, depth + 1)
        h.update(b"]")
    elif isinstance(obj, (set, frozenset)):
        again(h, sorted(obj, key=repr), depth + 1)
    elif isinstance(obj, dict):
        h.update(f"{{{len(obj)}".encode())
        for key in sorted(obj, key=repr)[:max_items]:
            h.update(repr(key).encode())
            again(h, obj[key], depth + 1)
        h.update(b"}")
    else:
        return False
    return True


def _value(h, obj, depth: int = 0) -> None:
    """Hash what a patch holds: tensors by sample, containers element by element."""
    if depth > _MAX_DEPTH:
        raise FingerprintError("a model patch is nested too deeply to fingerprint")
    if _plain_or_container(h, obj, depth, _value):
        return
    if callable(obj) and hasattr(obj, "__qualname__"):
        h.update(f"F{getattr(obj, '__module__', '')}.{obj.__qualname__}".encode())
    elif hasattr(obj, "__dict__"):  # weight adapters (LoRA, LoHa, ...) and similar holders
        h.update(f"O{type(obj).__module__}.{type(obj).__qualname__}".encode())
        _value(h, {k: v for k, v in vars(obj).items() if not k.startswith("_")}, depth + 1)
    else:
        raise FingerprintError(f"cannot fingerprint a model patch holding {type(obj).__name__}")


def model_fingerprint(model, prefix: str = "diffusion_model.") -> str:
    """Fingerprint (16 hex digits) of a ComfyUI ``ModelPatcher``'s diffusion model and patches."""
    h = hashlib.sha256()
    inner = model.model
    h.update(type(inner).__name__.encode())
    cfg = getattr(getattr(inner, "model_config", None), "unet_config", {}) or {}
    h.update(json.dumps({k: v for k, v in sorted(cfg.items()) if k != "dtype"}, default=str).encode())
    backup = getattr(model, "backup", {}) or {}
    hook_backup = getattr(model, "hook_backup", {}) or {}
    for name, t in inner.diffusion_model.state_dict(keep_vars=True).items():
        key = prefix + name
        if key in hook_backup:
            t = hook_backup[key][0]
        elif key in backup:
            t = backup[key].weight
        h.update(key.encode())
        try:
            _tensor(h, t)
        except FingerprintError:
            raise
        except Exception as e:
            raise FingerprintError(f"cannot read weight {key} ({type(t).__name__}, {e})") from e
    patches = getattr(model, "patches", {}) or {}
    for key in sorted(patches):
        h.update(f"P{key}".encode())
        for entry in patches[key]:
            _value(h, list(entry))
    for part in computation_options(model):  # nothing for a model without them: older records still match
        h.update(f"O{part}".encode())
    return h.hexdigest()[:16]


def _callable_name(f) -> str:
    f = getattr(f, "__func__", f)
    name = getattr(f, "__qualname__", None) or type(f).__qualname__
    return f"{getattr(f, '__module__', None) or type(f).__module__}.{name}"


_STATE_DEPTH, _STATE_ITEMS = 4, 256


def _const(h, c) -> None:
    """A code constant, whole (a long tuple differing at its end differs). Numbers, strings, bytes
    and their tuples / frozensets only occur; a frozenset is hashed in sorted order (its iteration
    follows string hashing, which varies between processes); an int by its hex digits (``repr`` of a
    huge int raises)."""
    if isinstance(c, (tuple, frozenset)):
        parts = []
        for x in c:
            sub = hashlib.sha256()
            _const(sub, x)
            parts.append(sub.digest())
        h.update(f"{type(c).__name__}{len(parts)}(".encode())
        for d in sorted(parts) if isinstance(c, frozenset) else parts:
            h.update(d)
        h.update(b")")
    elif isinstance(c, int) and not isinstance(c, bool):
        h.update(f"int:{c:x};".encode())
    elif isinstance(c, (str, bytes)):
        b = c.encode("utf-8", "surrogatepass") if isinstance(c, str) else c
        h.update(f"{type(c).__name__}{len(b)}:".encode())
        h.update(b)
    else:  # float, complex, bool, None, Ellipsis
        h.update(f"{type(c).__name__}:{c!r};".encode())


def _code(h, func, code=None, depth: int = 0) -> None:
    """What a function computes, beside its name: its bytecode, constants, the names it reads and
    the module-level numbers and strings among them (``K = 2.0`` read by a patch is its strength).
    Two lambdas of one scope share a name; ``lambda ...: x * 2`` and ``* 3`` differ in a constant.
    Line numbers are left out (a pack edited elsewhere keeps its records); other module globals
    (caches, models, functions) are left out too: they change while a process runs. Bytecode follows
    the interpreter: a record made under ``python -O`` is refused without it, never the reverse
    mistake."""
    code = code or func.__code__
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    g = getattr(func, "__globals__", None) or {}
    for name in code.co_names:
        v = g.get(name)
        if isinstance(v, (int, float)) or (isinstance(v, str) and len(v) < 1000):
            h.update(f"G{name}=".encode())
            _const(h, v)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            if depth < _STATE_DEPTH:
                _code(h, func, c, depth + 1)   # a nested function reads the same module
        else:
            _const(h, c)


def _state(h, obj, depth: int = 0) -> None:
    """What a patch function carries beside its name: closure values, default arguments, a bound
    method's or callable object's attributes, a partial's arguments (one function at two strengths
    hashed alike by name). Numbers, strings and tensors (by sample) count; a module, a model or any
    other object counts by its type only (never walked, never an error: the name was all before)."""
    if depth > _STATE_DEPTH:
        h.update(b"...")
        return
    if _plain_or_container(h, obj, depth, _state, _STATE_ITEMS):
        return
    if isinstance(obj, functools.partial):
        h.update(b"partial")
        _state(h, (obj.func, obj.args, obj.keywords), depth + 1)
    elif isinstance(obj, types.MethodType):
        h.update(_callable_name(obj).encode())
        _state(h, obj.__self__, depth + 1)
    elif isinstance(obj, types.FunctionType):
        h.update(_callable_name(obj).encode())
        _code(h, obj)
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # an empty cell
                cells.append(None)
        _state(h, (cells, obj.__defaults__, obj.__kwdefaults__), depth + 1)
    elif isinstance(obj, torch.nn.Module) or not hasattr(obj, "__dict__") or \
            type(obj).__module__.split(".")[0] == "comfy":  # models, patchers: by type
        h.update(f"O{type(obj).__module__}.{type(obj).__qualname__}".encode())
    else:  # a callable object (another pack's patch class): its plain attributes
        h.update(f"O{type(obj).__module__}.{type(obj).__qualname__}".encode())
        _state(h, {k: v for k, v in vars(obj).items() if not k.startswith("_")}, depth + 1)


def _callable_id(f) -> str:
    """The function's name and a digest of what it carries (``_state``)."""
    h = hashlib.sha256()
    _state(h, f)
    return f"{_callable_name(f)}#{h.hexdigest()[:12]}"


def computation_options(model) -> list[str]:
    """The model_options that change what the diffusion model computes, by name: attention and block
    patches and block replacements (another pack's, added after an inversion, would make the recorded
    keys/values those of another computation). An attention override is left out: packs use it to swap
    the attention kernel (the same computation) or to observe, and the pack's own tests spy through it."""
    to = (getattr(model, "model_options", {}) or {}).get("transformer_options", {}) or {}
    out = []
    for key in ("patches", "patches_replace"):
        for k in sorted(to.get(key) or {}, key=str):
            v = to[key][k]
            if isinstance(v, dict):
                out += [f"{key}/{k}/{kk}={_callable_id(v[kk])}" for kk in sorted(v, key=str)]
            else:
                out.append(f"{key}/{k}=" + ",".join(_callable_id(f) for f in (v or [])))
    return out

"""Metric models, loaded from ComfyUI's models folders the way ComfyUI loads weights (never
downloaded).

* LPIPS: the ``lpips`` package (its linear heads ship inside it) built with ``pnet_rand=True``;
  the backbone's torchvision weights come from ``models/lpips/`` (``squeezenet1_1-b8a52dc0.pth``,
  ``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth`` or any ``.safetensors`` named after the
  architecture). PIE-Bench uses the SqueezeNet variant.
* DINO ViT: an original DINO checkpoint (``dino_vitbase8_pretrain.pth``, PIE-Bench's ``dino_vitb8``)
  from ``models/dino/``.
* CLIP: the user's CLIP vision model (CLIPVisionLoader) and CLIP-L text encoder (CLIPLoader);
  the score uses the projected embeddings of both towers.

A missing file raises :class:`MissingModel`, whose message names the file and the folder; so does a
file that cannot be read as weights (truncated, corrupt). The caller reports that metric as not
available and computes the others.
"""
from __future__ import annotations

import os
import pickle
import threading

import torch

import comfy.model_management
import comfy.utils
import folder_paths

from ...kernels.dino_vit import DinoViT

MODEL_EXTENSIONS = {".pth", ".pt", ".bin", ".safetensors", ".ckpt"}

LPIPS_BACKBONES = {  # lpips net name -> (torchvision architecture, torchvision's file name)
    "squeeze": ("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth"),
    "alex": ("alexnet", "alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16", "vgg16-397923af.pth"),
}
LPIPS_MIN_SIZE = {"squeeze": 17, "alex": 31, "vgg": 16}  # smaller sides pool down to nothing in the backbone
DINO_DEFAULT = "dino_vitbase8_pretrain.pth"


class MissingModel(FileNotFoundError):
    """A metric's weights are not in their models folder (message names file and folder)."""


def register_folders() -> None:
    """Add ``models/lpips`` and ``models/dino`` to ComfyUI's folder registry (extra_model_paths.yaml
    can add more places under the same names)."""
    for name in ("lpips", "dino"):
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[name] = (
                [os.path.join(folder_paths.models_dir, name)], MODEL_EXTENSIONS)


def _folders(kind: str) -> list[str]:
    register_folders()
    return folder_paths.get_folder_paths(kind)


def list_files(kind: str) -> list[str]:
    register_folders()
    return folder_paths.get_filename_list(kind)


def _find(kind: str, wanted: str, prefix: str | None = None) -> str:
    path = folder_paths.get_full_path(kind, wanted) if wanted else None
    if path is None and prefix:
        for name in list_files(kind):
            if os.path.basename(name).startswith(prefix):
                path = folder_paths.get_full_path(kind, name)
                break
    if path is None:
        where = " or ".join(_folders(kind)) or f"models/{kind}"
        raise MissingModel(f"{wanted} not found in {where}: put the file there (see the README, 'Measuring edits')")
    return path


try:
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover (ComfyUI ships safetensors)
    _SafetensorError = OSError
UNREADABLE = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, _SafetensorError)


def load_weights(path: str) -> dict:
    """``comfy.utils.load_torch_file``; a file that cannot be read raises :class:`MissingModel` naming it."""
    try:
        return comfy.utils.load_torch_file(path, safe_load=True)
    except UNREADABLE as e:
        raise MissingModel(f"{path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                           "the file is truncated or corrupt; put a complete copy there") from None


_cache: dict = {}
_lock = threading.Lock()


def _cached(key, build):
    with _lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def lpips_model(net: str = "squeeze"):
    """``lpips.LPIPS`` with the package's linear heads and the backbone from ``models/lpips``."""
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS network must be one of {sorted(LPIPS_BACKBONES)}, not {net!r}")
    arch, filename = LPIPS_BACKBONES[net]
    path = _find("lpips", filename, prefix=arch)

    def build():
        import lpips

        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        load_lpips_backbone(model, load_weights(path))
        return model.eval().requires_grad_(False)

    return _cached(("lpips", path), build)


def load_lpips_backbone(model, tv_state: dict) -> None:
    """Load torchvision ``features.N.*`` weights into lpips' ``sliceK.N.*`` backbone slices (or
    torchmetrics' ``slices.K.N.*`` copy of the same network)."""
    target = model.net.state_dict()
    mapped = {}
    for key in target:
        parts = key.split(".")
        index, rest = (parts[2], parts[3:]) if parts[0] == "slices" else (parts[1], parts[2:])
        src = ".".join(["features", index, *rest])
        if src not in tv_state:
            raise MissingModel(f"the LPIPS backbone file lacks {src}: is it the torchvision weights of this LPIPS network?")
        mapped[key] = tv_state[src]
    model.net.load_state_dict(mapped)


def dino_model(name: str = DINO_DEFAULT) -> DinoViT:
    path = _find("dino", name)

    def build():
        try:
            return DinoViT(load_weights(path))
        except ValueError as e:  # another network's file: this metric is n/a, the others still run
            raise MissingModel(f"{path}: {e}; put DINO's own {DINO_DEFAULT} in models/dino") from None

    return _cached(("dino", path), build)


def lpips_distance(model, edit01: torch.Tensor, src01: torch.Tensor) -> float:
    """LPIPS of two ``[H, W, 3]`` 0..1 images, fed as the reference does (``x * 2 - 1``)."""
    a = edit01.permute(2, 0, 1).unsqueeze(0).float() * 2 - 1
    b = src01.permute(2, 0, 1).unsqueeze(0).float() * 2 - 1
    with torch.no_grad():
        return float(model(a, b).reshape(-1)[0])


def clip_image_embeds(clip_vision, image01: torch.Tensor) -> torch.Tensor:
    """Projected image embedding ``[D]`` from a ComfyUI CLIP vision model (its own preprocessing:
    shorter side to the model size, bicubic, centre crop)."""
    with torch.no_grad():
        out = clip_vision.encode_image(image01[None, ..., :3], crop=True)
    return out["image_embeds"][0].float()


def clip_text_embeds(clip, text: str) -> torch.Tensor:
    """Projected pooled text embedding ``[D]`` from a ComfyUI text encoder (CLIP-L)."""
    tokens = clip.tokenize(text)
    model = getattr(clip, "cond_stage_model", None)
    if model is not None and hasattr(model, "set_clip_options"):
        model.reset_clip_options()
        model.set_clip_options({"projected_pooled": True})
        clip.load_model()
        with torch.no_grad():
            out = model.encode_token_weights(tokens)
        model.reset_clip_options()
        pooled = out[1]
    else:
        pooled = clip.encode_from_tokens(tokens, return_pooled=True)[1]
    if pooled is None:
        raise ValueError("the text encoder gives no pooled output: connect a CLIP-L text encoder")
    return pooled.reshape(-1).float()


def device():
    return comfy.model_management.get_torch_device()

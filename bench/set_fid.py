"""FID / KID of a set of edits against reference images: folders of images or runner output folders.

    python scripts/judge_edits.py fid --edited runs/first --method kv --reference photos/ --inception PATH

Image sets are read as torch-fidelity reads folders (PIL, RGB, uint8), in sorted file order. A runner
output folder (one holding ``run.json``) gives the ``cases/<method>__<fp>/<case>/edited.png`` files of the
method folders its ``run.json`` names (the last run's: folders of earlier runs with other settings are
not read); ``method`` picks one method when the run holds several.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..kernels import set_fid

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def image_files(path: str | os.PathLike, method: str | None = None) -> list[Path]:
    """The images of a set: a runner output folder's edits (one method) or a folder's images."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    if (root / "run.json").is_file() and (root / "cases").is_dir():
        dirs = run_method_dirs(root)
        if method:
            if method not in dirs:
                raise ValueError(f"method {method!r} is not in the run {root} (it holds: {', '.join(sorted(dirs))})")
            dirs = {method: dirs[method]}
        elif len(dirs) > 1:
            raise ValueError(f"the run {root} holds several methods ({', '.join(sorted(dirs))}): name one")
        files = sorted(p for ds in dirs.values() for d in ds for p in (root / "cases" / d).glob("*/edited.png"))
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no images in {root}")
    return files


def run_method_dirs(root: Path) -> dict[str, list[str]]:
    """Method name -> its folder(s) under ``cases/``: the one ``run.json`` records (folders of earlier
    runs with other settings are left out). A folder whose ``run.json`` names no methods (or that has
    none) gives every folder on disk, grouped by the name before ``__``."""
    root = Path(root)
    try:
        run = json.loads((root / "run.json").read_text()) if (root / "run.json").is_file() else {}
        methods = run.get("methods") if isinstance(run, dict) else None
        if methods:
            return {str(name): [str(info["dir"])] for name, info in methods.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{root}/run.json cannot be read ({type(e).__name__}: {e}): is it a runner output "
                         "folder?") from None
    dirs: dict[str, list[str]] = {}
    for d in sorted(p for p in (root / "cases").glob("*") if p.is_dir()):
        dirs.setdefault(d.name.split("__")[0], []).append(d.name)
    return dirs


def load_uint8(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read the image {path} ({e}): remove or replace it") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def batches(files: list[Path], batch_size: int = 32) -> Iterator[torch.Tensor]:
    """uint8 ``[B, 3, H, W]`` batches; a change of image size starts a new batch."""
    group: list[torch.Tensor] = []
    for f in files:
        x = load_uint8(f)
        if group and (len(group) == batch_size or group[0].shape != x.shape):
            yield torch.stack(group)
            group = []
        group.append(x)
    if group:
        yield torch.stack(group)


def tensor_batches(images_uint8: torch.Tensor, batch_size: int = 32) -> Iterator[torch.Tensor]:
    for i in range(0, len(images_uint8), batch_size):
        yield images_uint8[i:i + batch_size]


def fid_of_folders(edited, reference, weights_path: str, method: str | None = None, batch_size: int = 32,
                   device="cpu", progress=None) -> set_fid.SetScore:
    model = set_fid.inception(weights_path, device)
    feats = []
    for files in (image_files(edited, method), image_files(reference)):
        it = batches(files, batch_size)
        if progress is not None:
            it = progress(it, total=(len(files) + batch_size - 1) // batch_size)
        feats.append(set_fid.features(model, it, device))
    return set_fid.score(*feats)

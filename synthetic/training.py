"""What every training command shares: ComfyUI set-up on CPU, seeds, weight paths, saving.

The weights live in ``synthetic/weights/`` and ship with the repository; ``scripts/train_synthetic.py
<model>`` recreates each one and refuses to overwrite a shipped file unless given ``--force``.
"""
from __future__ import annotations

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


def save(name: str, tensors: dict[str, torch.Tensor], force: bool, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = weight_path(name, must_exist=False)
    if path.exists() and not force:
        raise SystemExit(f"{path} exists (shipped weights); pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}, str(path),
              metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


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

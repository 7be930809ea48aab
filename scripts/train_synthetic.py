"""Train one of the small synthetic-set models on CPU and save it under synthetic/weights/.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/train_synthetic.py vae16|vae4|flux|kontext|sd|ip2p [--force]

Seeds are fixed; a shipped weight file is only overwritten with --force. Order: vae16 before flux
and kontext (they are trained on its latents), flux before kontext (kontext starts from it), vae4
before sd and ip2p. --checkpoint FILE (flux, kontext) makes a long run resumable on a loaded machine.

    python scripts/train_synthetic.py vae16|vae4|flux|kontext|sd|ip2p --export FILE [--force]

trains nothing: it writes the shipped model as a plain fp16 state dict in ComfyUI's layout (the shipped
files are stored compactly, see synthetic/training.py): a VAE exported into ComfyUI's models/vae folder
is listed and loaded by its Load VAE node as a TAESD-layout VAE.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parent.parent


def _import_pack():
    spec = importlib.util.spec_from_file_location("precise_edit", PACK / "__init__.py",
                                                  submodule_search_locations=[str(PACK)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["precise_edit"] = module  # the package body is not run: only its submodules are used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["vae16", "vae4", "flux", "kontext", "sd", "ip2p"])
    ap.add_argument("--force", action="store_true", help="overwrite the shipped weight file")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped recipe)")
    ap.add_argument("--channels", type=int, default=None, choices=[32, 64, 96, 128],
                    help="sd: the UNet's model_channels (a multiple of 32: its GroupNorm has 32 groups; default 64, the shipped width)")
    ap.add_argument("--recipe", choices=["plain", "blocks"], default=None,
                    help="VAE only: network recipe (default: the one the shipped file was trained with)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default 1, as the shipped files' commands ran; the weights depend on it)")
    ap.add_argument("--data", type=int, default=None,
                    help="flux, kontext: scenes / edit pairs in the training set (default: the shipped recipe's)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="flux, kontext: resume from this file if it exists and write it every 250 steps "
                         "(a stopped run goes on where it was, same final weights)")
    ap.add_argument("--export", type=str, default=None,
                    help="write the shipped file as a plain fp16 state dict in ComfyUI's layout to this path "
                         "(no training); --force to overwrite an existing file")
    args = ap.parse_args()
    _import_pack()
    if args.export is not None:
        training_only = [f"--{k}" for k in ("steps", "channels", "recipe", "threads", "data", "checkpoint")
                         if getattr(args, k) is not None]
        if not args.export.strip():
            ap.error("--export needs a file or folder (e.g. ComfyUI/models/vae/)")
        if training_only:
            ap.error(f"--export trains nothing: drop {', '.join(training_only)}")
        from safetensors import SafetensorError

        from precise_edit.synthetic.training import export

        try:
            print(f"wrote {export(args.model, args.export, args.force)}")
        except (OSError, ValueError, SafetensorError) as e:
            raise SystemExit(f"train_synthetic.py: {e}") from None
        return
    from precise_edit.synthetic.training import setup_comfy

    setup_comfy(args.threads or 1)
    kw = {"force": args.force}
    if args.steps:
        kw["steps"] = args.steps
    if args.data:
        if args.model not in ("flux", "kontext"):
            ap.error("--data is for the FLUX-side models (flux, kontext)")
        kw["n_images" if args.model == "flux" else "n_pairs"] = args.data
    if args.checkpoint:
        if args.model not in ("flux", "kontext"):
            ap.error("--checkpoint is for the FLUX-side models (flux, kontext)")
        kw["checkpoint"] = args.checkpoint
    if args.channels:
        if args.model != "sd":
            ap.error("--channels is for the text-to-image UNet (sd); ip2p takes the width of the sd it starts from")
        kw["channels"] = args.channels
    if args.recipe:
        if not args.model.startswith("vae"):
            ap.error("--recipe is for the VAEs (vae16, vae4)")
        kw["recipe"] = args.recipe
    if args.model == "vae16":
        from precise_edit.synthetic.train_vae import train
    elif args.model == "vae4":
        from functools import partial

        from precise_edit.synthetic.train_vae import train as train_vae
        train = partial(train_vae, latent_channels=4, name=args.model)
    elif args.model in ("sd", "ip2p"):
        from precise_edit.synthetic import train_unet
        train = train_unet.train_sd if args.model == "sd" else train_unet.train_ip2p
    elif args.model == "flux":
        from precise_edit.synthetic.train_dit import train_flux as train
    else:
        from precise_edit.synthetic.train_dit import train_kontext as train
    train(**kw)


if __name__ == "__main__":
    main()

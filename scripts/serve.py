"""Start the host ComfyUI with this pack loaded (used by `make run`).

Runs inside the environment prepared by scripts/bootstrap.py. Adds ``--cpu`` when torch
sees no GPU, listens on 127.0.0.1 only, and prints the address before handing over.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve ComfyUI with comfyui-precise-edit")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("extra", nargs="*", help="further arguments passed to ComfyUI's main.py")
    args = parser.parse_args()
    host = Path(os.environ["COMFYUI_PATH"])
    cmd = [sys.executable, str(host / "main.py"), "--listen", "127.0.0.1", "--port", str(args.port),
           "--disable-api-nodes"]
    import torch  # noqa: PLC0415 - only to decide --cpu

    if not torch.cuda.is_available() and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        cmd.append("--cpu")
    cmd += args.extra
    print(f"ComfyUI with comfyui-precise-edit: http://127.0.0.1:{args.port}  (ComfyUI at {host})", flush=True)
    print("Example workflows: open the template browser (Workflow > Browse Templates > comfyui-precise-edit).", flush=True)
    os.chdir(host)
    os.execv(sys.executable, cmd)


if __name__ == "__main__":
    main()

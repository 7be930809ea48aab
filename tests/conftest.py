"""Test set-up: import the host ComfyUI in-process and this pack as a package.

``COMFYUI_PATH`` (set by ``make test``) names the host ComfyUI. The pack is imported under
the package name ``precise_edit`` (its folder name has a hyphen), so ``nodes`` never clashes
with ComfyUI's own top-level ``nodes`` module.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

PACK_DIR = Path(__file__).resolve().parent.parent
HELPERS_DIR = Path(__file__).resolve().parent / "comfy_test_helpers"
COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH", PACK_DIR / ".host" / "ComfyUI")).resolve()


def _import_pack() -> None:
    if "precise_edit" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "precise_edit", PACK_DIR / "__init__.py", submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["precise_edit"] = module
    spec.loader.exec_module(module)


def _import_comfy() -> None:
    if not (COMFYUI_PATH / "comfy").is_dir():
        raise RuntimeError(f"no ComfyUI at {COMFYUI_PATH}: run the tests with `make test`")
    if str(COMFYUI_PATH) not in sys.path:
        sys.path.insert(0, str(COMFYUI_PATH))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    # Tests are CPU-only and deterministic unless asked otherwise.
    if os.environ.get("PRECISE_EDIT_TEST_DEVICE", "cpu") == "cpu":
        args.cpu = True
    if str(HELPERS_DIR) not in sys.path:
        sys.path.insert(0, str(HELPERS_DIR))


_import_comfy()
_import_pack()


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never reach the network (no weights or backbones are downloaded): any
    connection to an address outside loopback fails the test."""
    import ipaddress
    import socket

    real_connect = socket.socket.connect

    def guarded(self, address, *args, **kwargs):
        host = address[0] if isinstance(address, tuple) else address
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host in ("localhost",) or isinstance(address, (str, bytes))  # unix sockets
        if not loopback:
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def flux():
    """The tiny FLUX.1-dev fixture model (seed 0), built once per test module (a module may
    define its own ``flux``)."""
    import tiny_models as tm

    return tm.tiny_flux(0)


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch):
    """ComfyUI's input / output / temp folders in the test's own temporary folder (use with
    ``pytestmark = pytest.mark.usefixtures("comfy_dirs")``)."""
    import folder_paths

    for name in ("input", "output", "temp"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "input"))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path / "temp"))
    return tmp_path

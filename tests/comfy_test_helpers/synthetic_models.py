"""The trained synthetic-set models (synthetic/weights/) for tests and workflows.

Imports the pack's ``synthetic`` package by path, so it works both in-process (tests, where the
pack is ``precise_edit``) and in the live server (where ComfyUI names the pack after its folder).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PACK = Path(__file__).resolve().parent.parent.parent


def synthetic():
    """The pack's ``synthetic`` package."""
    if "precise_edit.synthetic" in sys.modules or "precise_edit" in sys.modules:
        import precise_edit.synthetic.models  # noqa: F401

        return sys.modules["precise_edit.synthetic"]
    name = "pe_synthetic"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _PACK / "synthetic" / "__init__.py",
                                                      submodule_search_locations=[str(_PACK / "synthetic")])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    importlib.import_module(f"{name}.models")
    return sys.modules[name]


def models():
    return synthetic().models


MODELS = ("flux", "kontext", "sd", "ip2p")
UNETS = ("sd", "ip2p")      # SD1.5-class UNets, with the 4-channel VAE

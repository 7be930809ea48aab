"""Import this checkout as the package ``precise_edit`` (its folder name has a hyphen), without
ComfyUI, for the command-line scripts that use the pack's ``bench`` package."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parent.parent


def import_pack() -> None:
    if "precise_edit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("precise_edit", PACK / "__init__.py",
                                                      submodule_search_locations=[str(PACK)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["precise_edit"] = module
        spec.loader.exec_module(module)

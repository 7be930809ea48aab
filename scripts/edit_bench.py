"""Run ComfyUI workflows over a PIE-Bench-format data set and measure the edits.

    python scripts/edit_bench.py --data bench/data/pie_mini --workflow my_edit.json --out runs/first

(see README, 'Measuring edits'). Imports the pack's ``bench`` package under the name ``precise_edit``
(the pack's folder name has a hyphen), without ComfyUI.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parent.parent


def _import_pack():
    if "precise_edit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("precise_edit", PACK / "__init__.py",
                                                      submodule_search_locations=[str(PACK)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["precise_edit"] = module
        spec.loader.exec_module(module)


if __name__ == "__main__":
    _import_pack()
    from precise_edit.bench.cli import main

    sys.exit(main())

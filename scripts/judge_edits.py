"""FID / KID and LMM Score over runner output folders (see README, "Judging sets and with a model").

    python scripts/judge_edits.py fid --edited runs/first --reference photos/ --inception FILE
    python scripts/judge_edits.py lmm --run runs/first --data bench/data/pie_mini --endpoint URL --model NAME

Imports the pack's ``bench`` package under the name ``precise_edit``
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
    from precise_edit.bench.judge_cli import main

    sys.exit(main())

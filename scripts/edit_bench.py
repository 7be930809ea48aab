"""Run ComfyUI workflows over a PIE-Bench-format data set and measure the edits.

    python scripts/edit_bench.py --data bench/data/pie_mini --workflow my_edit.json --out runs/first

(see README, 'Measuring edits'). Imports the pack's ``bench`` package under the name ``precise_edit``
(the pack's folder name has a hyphen), without ComfyUI.
"""
from __future__ import annotations

import sys

from pack_import import import_pack

if __name__ == "__main__":
    import_pack()
    from precise_edit.bench.cli import main

    sys.exit(main())

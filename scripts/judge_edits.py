"""FID / KID and LMM Score over runner output folders (see README, "Judging sets and with a model").

    python scripts/judge_edits.py fid --edited runs/first --reference photos/ --inception FILE
    python scripts/judge_edits.py lmm --run runs/first --data bench/data/pie_mini --endpoint URL --model NAME

Imports the pack's ``bench`` package under the name ``precise_edit``
(the pack's folder name has a hyphen), without ComfyUI.
"""
from __future__ import annotations

import sys

from pack_import import import_pack

if __name__ == "__main__":
    import_pack()
    from precise_edit.bench.judge_cli import main

    sys.exit(main())

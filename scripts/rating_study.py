"""Make a human rating study from a runner output folder or a CSV of image pairs (server/cli.py).

    python scripts/rating_study.py --run runs/first --user-dir ComfyUI/user
    python scripts/rating_study.py --csv pairs.csv --user-dir ComfyUI/user
"""
from __future__ import annotations

import sys

from pack_import import import_pack

if __name__ == "__main__":
    import_pack()
    from precise_edit.server.cli import main

    sys.exit(main())

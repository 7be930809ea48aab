"""Make a human rating study from a runner output folder or a CSV of image pairs (see README, "Rating page").

    python scripts/rating_study.py --run runs/first [--methods kv,spot] [--data bench/data/pie_mini] --user-dir USER
    python scripts/rating_study.py --csv pairs.csv --user-dir USER      # columns: source,instruction,method,edited

USER is ComfyUI's user directory (``ComfyUI/user`` unless ComfyUI runs with --user-directory or
--base-directory): the study goes into USER/precise_edit/rating, which the rating page reads. Prints the
rater link and the owner link (keep the owner token: it is stored hashed and shown only now).
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a runner output folder (holding run.json)")
    src.add_argument("--csv", help="a CSV of image pairs: source, instruction, method, edited")
    ap.add_argument("--methods", default="", help="with --run: the methods to compare, comma-separated (default all)")
    ap.add_argument("--data", help="with --run: the data set folder, when it moved since the run")
    ap.add_argument("--limit", type=int, help="at most this many items")
    ap.add_argument("--name", default="", help="the study's name (shown to raters)")
    ap.add_argument("--user-dir", required=True, help="ComfyUI's user directory")
    ap.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address, for the printed links")
    args = ap.parse_args(argv)

    from .store import Invalid, RatingStore
    from .studies import items_from_csv, items_from_run

    try:
        if args.run:
            methods = [m.strip() for m in args.methods.split(",") if m.strip()] or None
            items = items_from_run(args.run, methods, args.data, args.limit)
        else:
            items = items_from_csv(args.csv)[: args.limit or None]
        made = RatingStore(os.path.join(args.user_dir, "precise_edit", "rating")).create_study(
            args.name or os.path.basename(os.path.normpath(args.run or args.csv)), items)
    except Invalid as e:
        print(f"rating_study: {e}", file=sys.stderr)
        return 2
    base = args.server.rstrip("/") + "/precise_edit/rating"
    print(f"study {made['study']}: {len(items)} items")
    print(f"raters: {base}/rate/{made['study']}#key={made['rater_key']}")
    print(f"owner (results, export; keep private): {base}/results/{made['study']}#owner={made['owner_token']}")
    return 0

"""``scripts/judge_edits.py``: FID / KID and LMM Score over runner output folders.

    python scripts/judge_edits.py fid --edited runs/first --method kv --reference photos/ --inception FILE
    python scripts/judge_edits.py lmm --run runs/first --data bench/data/pie_mini \\
        --endpoint http://127.0.0.1:8000/v1 --model Qwen2.5-VL-7B-Instruct [--cache FILE]

``lmm`` scores every ok case of the run (source image from the data set, instruction = the case's
editing_instruction) and writes OUT/lmm_scores.csv (case_id, method, score, the four sub-scores,
status, error); failed cases are marked and the rest go on.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from tqdm import tqdm

from . import lmm_score as lmm
from . import set_fid as fid
from .dataset import load_cases, record_case_id


def _fid(args) -> int:
    try:
        s = fid.fid_of_folders(args.edited, args.reference, str(args.inception), args.method, args.batch,
                               args.device, progress=lambda it, total: tqdm(it, total=total, unit="batch"))
    except (ValueError, FileNotFoundError) as e:
        print(f"judge_edits fid: {e}", file=sys.stderr)
        return 2
    print(json.dumps(s.as_dict(), indent=1))
    for w in s.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _lmm(args) -> int:
    data = args.data
    cases = {c.case_id: c for c in load_cases(args.mapping_file or data / "mapping_file.json")}
    images = args.images or data / "annotation_images"
    ep = lmm.Endpoint(args.endpoint, args.model, args.api_key_env, args.timeout, args.max_retries)
    cache = lmm.Cache(str(args.cache)) if args.cache else None
    try:  # only the method folders of the run that run.json describes (not earlier runs' folders)
        dirs = fid.run_method_dirs(args.run)
    except ValueError as e:
        print(f"judge_edits lmm: {e}", file=sys.stderr)
        return 2
    todo = sorted((png, name) for name, ds in dirs.items() for d in ds
                  for png in (args.run / "cases" / d).glob("*/edited.png"))
    if not todo:
        print(f"judge_edits lmm: no edited.png under {args.run / 'cases'}", file=sys.stderr)
        return 2
    rows = []
    for png, method in tqdm(todo, unit="case"):
        recorded = record_case_id(png.parent)
        case_id = png.parent.name if recorded is None else str(recorded)
        case = cases.get(case_id)
        row = {"case_id": case_id, "method": method, "score": "", **{a: "" for a in lmm.ASPECTS}}
        if case is None or not case.editing_instruction:
            rows.append({**row, "status": "failed", "error": "case or its editing_instruction not in the data set"})
            continue
        j = lmm.judge(ep, (images / case.image_path).read_bytes(), png.read_bytes(), case.editing_instruction, cache)
        if j.score is None:
            rows.append({**row, "status": "failed", "error": j.error})
        else:
            rows.append({**row, "score": j.score, **j.aspects, "status": "ok", "error": ""})
    out = args.run / "lmm_scores.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{ok} of {len(rows)} cases scored; {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="judge_edits", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fid", help="FID and KID of edits against reference images")
    f.add_argument("--edited", type=Path, required=True, help="folder of images or a runner output folder")
    f.add_argument("--method", help="the method, when the run holds several")
    f.add_argument("--reference", type=Path, required=True, help="folder of reference images")
    f.add_argument("--inception", type=Path, required=True,
                   help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (never downloaded)")
    f.add_argument("--batch", type=int, default=32)
    f.add_argument("--device", default="cpu")
    m = sub.add_parser("lmm", help="LMM Score of every edit of a run")
    m.add_argument("--run", type=Path, required=True, help="runner output folder")
    m.add_argument("--data", type=Path, required=True, help="the run's data set folder")
    m.add_argument("--mapping-file", type=Path)
    m.add_argument("--images", type=Path)
    m.add_argument("--endpoint", required=True, help="OpenAI-compatible base address, e.g. http://127.0.0.1:8000/v1")
    m.add_argument("--model", required=True)
    m.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    m.add_argument("--timeout", type=float, default=60.0)
    m.add_argument("--max-retries", type=int, default=3)
    m.add_argument("--cache", type=Path, help="SQLite answer cache (e.g. ComfyUI/user/precise_edit/lmm_score.sqlite)")
    args = p.parse_args(argv)
    if args.cmd == "fid" and not args.inception.is_file():
        print(f"judge_edits fid: {args.inception.name} not found in {args.inception.parent}: put torch-fidelity's "
              "InceptionV3 weights there", file=sys.stderr)
        return 2
    return _fid(args) if args.cmd == "fid" else _lmm(args)

"""Rating studies from the runner's output folder, from a CSV of image pairs, or from image arrays
(the RatingStudy node). Every picture is re-encoded as PNG and copied into the study.

CSV columns: ``source, instruction, method, edited`` (paths relative to the CSV file's folder, or
absolute); rows with the same source and instruction form one item.
"""
from __future__ import annotations

import csv
import io
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from .store import Invalid, NewItem

CSV_COLUMNS = ("source", "instruction", "method", "edited")


def png_of_file(path: Path) -> bytes:
    try:
        with Image.open(path) as im:
            return png_of_array(np.asarray(im.convert("RGB")))
    except (OSError, ValueError) as e:
        raise Invalid(f"cannot read the image {path}: {e}") from None


def png_of_array(arr: np.ndarray) -> bytes:
    """PNG bytes of an ``[H, W, 3]`` uint8 array, or a float array in 0..1 (ComfyUI's IMAGE)."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a[..., :3]).save(buf, format="PNG")
    return buf.getvalue()


def items_from_csv(csv_path: str | Path) -> list[NewItem]:
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise Invalid(f"{path}: the CSV lacks the column(s) {', '.join(missing)} "
                              f"(needed: {', '.join(CSV_COLUMNS)})")
            rows = list(reader)
    except OSError as e:
        raise Invalid(f"cannot read {path}: {e}") from None
    groups: OrderedDict = OrderedDict()
    for n, row in enumerate(rows, start=2):
        if not all((row.get(c) or "").strip() for c in CSV_COLUMNS):
            raise Invalid(f"{path} line {n}: every column needs a value")
        groups.setdefault((row["source"].strip(), row["instruction"].strip()), []).append(row)
    items = []
    for (source, instruction), group in groups.items():
        src = png_of_file(path.parent / source)
        edits = [(r["method"].strip(), png_of_file(path.parent / r["edited"].strip())) for r in group]
        items.append(NewItem(instruction, src, edits, case_id=Path(source).stem))
    return items


def items_from_run(run_folder: str | Path, methods: list[str] | None = None, data: str | Path | None = None,
                   limit: int | None = None) -> list[NewItem]:
    """Items of a runner output folder: one per case that two or more of the methods edited
    successfully. ``data`` overrides the data set folder recorded in ``run.json`` (a moved data set)."""
    from ..bench.dataset import case_folders, load_cases, record_ok

    root = Path(run_folder)
    try:
        run = json.loads((root / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise Invalid(f"{root} is not a runner output folder (run.json: {e})") from None
    mapping, images = Path(run["mapping_file"]), Path(run["images_dir"])
    if data is not None:
        mapping, images = Path(data) / "mapping_file.json", Path(data) / "annotation_images"
    dirs = {name: info["dir"] for name, info in run.get("methods", {}).items()}
    if methods:
        unknown = [m for m in methods if m not in dirs]
        if unknown:
            raise Invalid(f"method(s) {', '.join(unknown)} not in the run (it holds: {', '.join(sorted(dirs))})")
        dirs = {m: dirs[m] for m in methods}
    try:
        cases = load_cases(mapping)
    except ValueError as e:
        raise Invalid(str(e)) from None
    ids = [c.case_id for c in cases]
    folders = {name: case_folders(root / "cases" / d, ids) for name, d in dirs.items()}
    items = []
    for case in cases:
        edits = []
        for name, d in dirs.items():
            folder = folders[name][case.case_id]
            if record_ok(folder, case.case_id) and (folder / "edited.png").is_file():
                edits.append((name, png_of_file(folder / "edited.png")))
        if len(edits) < 2 or case.error:
            continue
        instruction = case.editing_instruction or f"Make it: {case.editing_prompt}"
        items.append(NewItem(instruction, png_of_file(images / case.image_path), edits, case_id=case.case_id))
        if limit and len(items) >= limit:
            break
    if not items:
        raise Invalid(f"{root}: no case was edited successfully by two or more of the methods")
    return items


def items_from_arrays(source: np.ndarray, edited: list[np.ndarray], methods: list[str],
                      instructions: list[str]) -> list[NewItem]:
    """``edited[m]`` is method ``m``'s ``[B, H, W, 3]`` batch; item ``b`` compares ``edited[m][b]``
    over the methods, with source ``source[b]`` (a batch of one is used for every item) and
    instruction ``instructions[b]`` (one for all likewise)."""
    if len(edited) != len(methods) or len(methods) < 2:
        raise Invalid("two or more edited batches, one method name each")
    if len(set(methods)) != len(methods):
        raise Invalid("method names must differ")
    sizes = {len(e) for e in edited}
    if len(sizes) != 1:
        raise Invalid(f"the edited batches differ in size ({', '.join(str(len(e)) for e in edited)})")
    n = sizes.pop()
    if len(source) not in (1, n):
        raise Invalid(f"the source batch holds {len(source)} images; give 1 or {n}")
    if len(instructions) not in (1, n):
        raise Invalid(f"{len(instructions)} instructions for {n} items; give 1 or {n} (one per line)")
    items = []
    for b in range(n):
        src = png_of_array(source[b if len(source) > 1 else 0])
        text = instructions[b if len(instructions) > 1 else 0]
        items.append(NewItem(text, src, [(m, png_of_array(e[b])) for m, e in zip(methods, edited)],
                             case_id=str(b)))
    return items


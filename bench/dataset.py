"""A data set in PIE-Bench's format: ``mapping_file.json`` next to an ``annotation_images/`` folder.

Each entry (keyed by case id) holds ``image_path`` (relative to the images folder),
``original_prompt``, ``editing_prompt``, ``editing_instruction``, ``editing_type_id`` and ``mask``
(PIE-Bench's run-length encoding at the image's size). Square brackets in prompts (PIE-Bench marks
the edited words with them) are removed, as PIE-Bench's evaluation does.

A malformed entry or a missing image does not stop anything: :func:`load_cases` returns it with
``error`` set, and the runner records that case as failed.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..kernels.pie_masks import rle_decode

REQUIRED = ("image_path", "original_prompt", "editing_prompt", "mask")
EDITING_TYPES = {  # PIE-Bench's editing_type_id
    "0": "random", "1": "change object", "2": "add object", "3": "delete object", "4": "change attribute content",
    "5": "change attribute pose", "6": "change attribute color", "7": "change attribute material",
    "8": "change background", "9": "change style",
}


@dataclass
class Case:
    case_id: str
    image_path: str = ""
    original_prompt: str = ""
    editing_prompt: str = ""
    editing_instruction: str = ""
    editing_type_id: str = ""
    mask_rle: list = field(default_factory=list)
    error: str = ""

    @property
    def editing_type(self) -> str:
        return EDITING_TYPES.get(self.editing_type_id, self.editing_type_id)


def _clean(text) -> str:
    return str(text or "").replace("[", "").replace("]", "")


def load_cases(mapping_file: Path, types: list[str] | None = None, limit: int | None = None) -> list[Case]:
    """Every case of the mapping file (in file order), with ``error`` set on malformed ones.
    Raises ``ValueError`` only when the file itself cannot be read as a JSON object."""
    try:
        data = json.loads(Path(mapping_file).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the mapping file {mapping_file}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{mapping_file}: expected a JSON object of cases keyed by id, got {type(data).__name__}")
    cases = []
    for key, item in data.items():
        if not isinstance(item, dict):
            cases.append(Case(str(key), error=f"case {key}: entry is a {type(item).__name__}, not an object"))
            continue
        missing = [k for k in REQUIRED if k not in item]
        case = Case(str(key), image_path=str(item.get("image_path", "")),
                    original_prompt=_clean(item.get("original_prompt")), editing_prompt=_clean(item.get("editing_prompt")),
                    editing_instruction=_clean(item.get("editing_instruction")),
                    editing_type_id=str(item.get("editing_type_id", "")))
        mask = item.get("mask")
        if missing:
            case.error = f"case {key}: the mapping entry lacks {', '.join(missing)}"
        elif not isinstance(mask, list) or len(mask) % 2 or not all(isinstance(v, int) for v in mask):
            # null or "" is no mask at all (not an empty one): only [] means "nothing edited"
            case.error = f"case {key}: 'mask' must be a list of start/length integer pairs, not {json.dumps(mask)[:40]}"
        else:
            case.mask_rle = mask
        if types and case.editing_type_id not in types:
            continue
        cases.append(case)
    return cases[:limit] if limit else cases


def case_inputs(case: Case, images_dir: Path) -> tuple[bytes, np.ndarray, tuple[int, int]]:
    """The case's source as RGB PNG bytes and its raw mask ``[H, W]`` (no border; 1 = edit).
    Raises ``ValueError`` with a clear message when the image is missing or unreadable."""
    if case.error:
        raise ValueError(case.error)
    path = Path(images_dir) / case.image_path
    if not path.is_file():
        raise ValueError(f"case {case.case_id}: image {path} not found")
    try:
        img = Image.open(path).convert("RGB")
    except OSError as e:
        raise ValueError(f"case {case.case_id}: cannot read image {path}: {e}") from None
    mask = rle_decode(case.mask_rle, (img.height, img.width), border=False)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), mask, (img.height, img.width)


def rgba_with_mask(png: bytes, mask: np.ndarray) -> bytes:
    """The source with ``alpha = 1 - mask``: ComfyUI's LoadImage then outputs the mask as MASK."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    alpha = ((1.0 - mask) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.concatenate([img, alpha[..., None]], -1), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((mask * 255).round().astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


UNSAFE_IN_NAMES = "/\\~\0"


def case_dir_name(case_id: str) -> str:
    """A case's folder name: the id itself, unless it holds ``/``, ``\\``, ``~`` or is ``.``, ``..`` or
    over 100 characters; then the id with those replaced by ``_`` and ``~`` plus a hash of the exact id.
    Names are unique: ``x/y`` and ``x_y`` never share a folder (only hashed names hold ``~``)."""
    if case_id not in ("", ".", "..") and len(case_id) <= 100 and not any(c in UNSAFE_IN_NAMES for c in case_id):
        return case_id
    safe = "".join("_" if c in UNSAFE_IN_NAMES else c for c in case_id)[:60]
    return f"{safe}~{hashlib.sha256(case_id.encode()).hexdigest()[:10]}"


def read_record(folder: Path) -> dict | None:
    """A case folder's ``record.json`` (the runner's row for it), or None when it is missing or unreadable."""
    try:
        rec = json.loads((Path(folder) / "record.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def record_case_id(folder: Path):
    """The case id a case folder's record names (folder names are not always the id: :func:`case_dir_name`)."""
    return (read_record(folder) or {}).get("case_id")


def record_ok(folder: Path, case_id: str) -> bool:
    """The folder holds a successful edit of ``case_id`` (a record without an id counts as this case's)."""
    rec = read_record(folder)
    return rec is not None and rec.get("status") == "ok" and rec.get("case_id", case_id) == case_id


def case_folders(method_root: Path, case_ids: list[str]) -> dict[str, Path]:
    """Each case's folder under ``method_root``. A run made before the names were unique keeps its
    folder (``/`` replaced by ``_``) when that folder's record is this case's and no other case of
    the list is named so: rerunning it resumes instead of starting again."""
    names = {cid: case_dir_name(cid) for cid in case_ids}
    taken = set(names.values())
    out = {}
    for cid, name in names.items():
        legacy = cid.replace("/", "_")
        if (legacy != name and legacy not in taken and legacy not in (".", "..") and "\0" not in legacy
                and record_case_id(method_root / legacy) == cid):
            name = legacy
        out[cid] = method_root / name
    return out

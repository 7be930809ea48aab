"""Write edit pairs in the PIE-Bench layout, so the PIE-Bench runner scores the synthetic set.

``mapping_file.json`` maps an id to the PIE-Bench fields (``image_path``, ``original_prompt`` and
``editing_prompt`` with the edited words in brackets, ``editing_instruction``, ``editing_type_id``,
``blended_word``, ``mask`` as PIE-Bench run-length pairs ``[start, length, ...]`` over the
row-major flattened mask) plus what only a synthetic set knows: ``target_image_path``,
``image_size``, ``edit_kind`` and the source/target object lists the judge checks.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .scenes import SIZE, EditPair, Obj, render

# PIE-Bench's editing type ids (0-9); moving an object has no PIE-Bench type and gets 10.
EDIT_TYPE_IDS = {"shape": "1", "add": "2", "remove": "3", "colour": "6", "move": "10"}
EDIT_TYPE_NAMES = {"1": "change object", "2": "add object", "3": "delete object",
                   "6": "change attribute color", "10": "move object"}
TYPE_DIRS = {"1": "1_change_object_80", "2": "2_add_object_80", "3": "3_delete_object_80",
             "6": "6_change_color_40", "10": "10_move_object"}


def rle_encode(mask: np.ndarray) -> list[int]:
    """PIE-Bench run-length code: start index and length of every run of ones, row-major."""
    flat = np.concatenate([[0], mask.astype(np.uint8).ravel(), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return np.stack([starts, ends - starts], 1).ravel().astype(int).tolist()


def rle_decode(code: list[int], shape: tuple[int, int]) -> np.ndarray:
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    for start, length in zip(code[0::2], code[1::2]):
        flat[start:start + length] = True
    return flat.reshape(shape)


def _obj(o: Obj | None) -> dict | None:
    return None if o is None else {"colour": o.colour, "shape": o.shape, "position": o.position,
                                   "cell": o.cell, "half": o.half, "dx": o.dx, "dy": o.dy}


def _bracketed(pair: EditPair) -> tuple[str, str, str]:
    """Source and target captions with the edited object's phrase in brackets, and the
    blended words (PIE-Bench: the source word and the target word)."""
    src, tgt = pair.source.caption(), pair.target.caption()
    a = pair.subject.phrase() if pair.subject else ""
    b = pair.result.phrase() if pair.result else ""
    if a:
        src = src.replace(a, f"[{a}]", 1)
    if b:
        tgt = tgt.replace(b, f"[{b}]", 1)
    words = " ".join(w for w in ((pair.subject.shape if pair.subject else ""),
                                 (pair.result.shape if pair.result else "")) if w)
    return src, tgt, words


def entry(pair: EditPair, image_path: str, target_path: str, size: int = SIZE) -> dict:
    src, tgt, blended = _bracketed(pair)
    type_id = EDIT_TYPE_IDS[pair.kind]
    return {
        "image_path": image_path, "target_image_path": target_path,
        "original_prompt": src, "editing_prompt": tgt, "editing_instruction": pair.instruction,
        "editing_type_id": type_id, "editing_type_name": EDIT_TYPE_NAMES[type_id], "edit_kind": pair.kind,
        "blended_word": blended, "mask": rle_encode(pair.mask(size)), "image_size": [size, size],
        "subject": _obj(pair.subject), "result": _obj(pair.result),
        "source_objects": [_obj(o) for o in pair.source.objects],
        "target_objects": [_obj(o) for o in pair.target.objects],
        "background": {"colour": pair.source.bg_colour, "kind": pair.source.bg_kind, "seed": pair.source.bg_seed},
    }


def write(pairs: list[EditPair], root: str | Path, size: int = SIZE) -> Path:
    """Write images (PNG) under ``annotation_images/<type>/`` and ``mapping_file.json``; image paths
    are relative to ``annotation_images/``, as in PIE-Bench (the runner reads them so)."""
    from PIL import Image

    root = Path(root)
    mapping = {}
    for i, pair in enumerate(pairs):
        key = f"{i:06d}"
        folder = TYPE_DIRS[EDIT_TYPE_IDS[pair.kind]]
        (root / "annotation_images" / folder).mkdir(parents=True, exist_ok=True)
        src_path, tgt_path = f"{folder}/{key}.png", f"{folder}/{key}_target.png"
        Image.fromarray(render(pair.source, size)[0]).save(root / "annotation_images" / src_path)
        Image.fromarray(render(pair.target, size)[0]).save(root / "annotation_images" / tgt_path)
        mapping[key] = entry(pair, src_path, tgt_path, size)
    (root / "mapping_file.json").write_text(json.dumps(mapping, indent=1))
    return root / "mapping_file.json"


def pair_from_entry(e: dict) -> EditPair:
    """Rebuild the edit pair (for the judge) from a mapping entry."""
    from .scenes import Scene

    def obj(d):
        return None if d is None else Obj(d["colour"], d["shape"], d["cell"], d["half"], d["dx"], d["dy"])

    bg = e["background"]
    src = Scene(tuple(obj(d) for d in e["source_objects"]), bg["colour"], bg["kind"], bg["seed"])
    tgt = Scene(tuple(obj(d) for d in e["target_objects"]), bg["colour"], bg["kind"], bg["seed"])
    return EditPair(e["edit_kind"], src, tgt, e["editing_instruction"], obj(e["subject"]), obj(e["result"]))

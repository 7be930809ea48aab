"""Generate the small PIE-Bench-format data set shipped in ``bench/data/pie_mini`` (flat shapes, so
the PNGs stay small; masks in PIE-Bench's run-length encoding).

    python scripts/make_pie_mini.py [--out bench/data/pie_mini] [--size 512]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PACK = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PACK / "kernels"))
from pie_masks import rle_encode  # noqa: E402  (numpy only)

# (id, editing_type_id, original prompt, editing prompt, instruction, scene, mask shape)
CASES = [
    ("000000000001", "1", "a [red ball] on a green lawn", "a [blue cube] on a green lawn",
     "turn the ball into a cube", "ball", "disc"),
    ("000000000002", "2", "a green lawn under a blue sky", "a [yellow sun] over a green lawn under a blue sky",
     "add a sun", "lawn", "sun"),
    ("000000000003", "3", "a [red ball] on a green lawn", "a green lawn", "remove the ball", "ball", "disc"),
    ("000000000004", "6", "a [red] ball on a green lawn", "a [purple] ball on a green lawn",
     "make the ball purple", "ball", "disc"),
    ("000000000005", "8", "a red ball on a [green lawn]", "a red ball on a [sandy beach]",
     "put the ball on a beach", "ball", "ground"),
    ("000000000006", "9", "a red ball on a green lawn", "a red ball on a green lawn, [watercolor painting]",
     "make it a watercolor", "ball", "all"),
]


def scene(kind: str, size: int) -> Image.Image:
    s = size / 512
    img = Image.new("RGB", (size, size), (120, 170, 230))
    d = ImageDraw.Draw(img)
    d.rectangle([0, int(330 * s), size, size], fill=(70, 150, 60))
    if kind == "ball":
        d.ellipse([int(190 * s), int(230 * s), int(330 * s), int(370 * s)], fill=(210, 40, 40))
    return img


def mask_for(shape: str, size: int) -> np.ndarray:
    s = size / 512
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    if shape == "disc":
        d.ellipse([int(180 * s), int(220 * s), int(340 * s), int(380 * s)], fill=255)
    elif shape == "sun":
        d.ellipse([int(340 * s), int(40 * s), int(470 * s), int(170 * s)], fill=255)
    elif shape == "ground":
        d.rectangle([0, int(330 * s), size, size], fill=255)
    elif shape == "all":
        d.rectangle([0, 0, size, size], fill=255)
    return (np.asarray(m) > 127).astype(np.uint8)


def make(out: Path, size: int = 512, cases=CASES) -> Path:
    images = out / "annotation_images" / "mini"
    images.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for cid, type_id, src, tgt, instr, kind, shape in cases:
        rel = f"mini/{cid}.png"
        scene(kind, size).save(out / "annotation_images" / rel, optimize=True)
        mapping[cid] = {"image_path": rel, "original_prompt": src, "editing_prompt": tgt,
                        "editing_instruction": instr, "editing_type_id": type_id, "blended_word": "",
                        "mask": rle_encode(mask_for(shape, size))}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in mapping.items()]  # one case per line
    (out / "mapping_file.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=PACK / "bench" / "data" / "pie_mini")
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args()
    print(make(a.out, a.size))

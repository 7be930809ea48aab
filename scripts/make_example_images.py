"""Draw the example images the shipped workflows load (``example_workflows/input/``).

Every picture is drawn here from shapes (no photo, no model output, no download), so the
pack can ship them under its own license. The edit region of each source image is already
painted as transparency (ComfyUI's Load Image turns it into the MASK: transparent = 1), so a
template runs as it opens. The pack copies them into ComfyUI's input folder on start when a
file of that name is not there yet (``nodes/examples.py``).

Run: ``.venv/bin/python scripts/make_example_images.py`` (needs Pillow and numpy).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parent.parent / "example_workflows" / "input"
W, H = 768, 512

# What each picture shows: the workflows' prompts describe exactly this.
CAT_SCENE = "a flat illustration of a grey cat sitting on a wooden bench in a park"
HILLS_SCENE = "a flat illustration of green hills under a blue sky"
BALLOON = "a red and yellow striped hot-air balloon"
HOUSE = "a small red house with a grey roof"


def _sky_and_grass(d: ImageDraw.ImageDraw, horizon: int) -> None:
    for y in range(horizon):
        t = y / horizon
        d.line([(0, y), (W, y)], fill=(int(110 + 90 * t), int(170 + 60 * t), int(235 + 15 * t)))
    for y in range(horizon, H):
        t = (y - horizon) / (H - horizon)
        d.line([(0, y), (W, y)], fill=(int(90 - 30 * t), int(160 - 40 * t), int(70 - 20 * t)))


def _tree(d, x, y, r):
    d.rectangle([x - r // 6, y, x + r // 6, y + int(1.6 * r)], fill=(110, 75, 45))
    for dx, dy, k in ((0, -r // 2, 1.0), (-r // 2, 0, 0.8), (r // 2, 0, 0.8)):
        rr = int(r * k)
        d.ellipse([x + dx - rr, y + dy - rr, x + dx + rr, y + dy + rr], fill=(50, 120, 55))


def cat_on_bench() -> tuple[Image.Image, tuple[int, int, int, int]]:
    img = Image.new("RGB", (W, H))
    d = ImageDraw.Draw(img)
    _sky_and_grass(d, 250)
    d.ellipse([560, 40, 640, 120], fill=(255, 235, 150))                    # sun
    for x, y, r in ((90, 170, 70), (680, 190, 60), (200, 200, 45)):
        _tree(d, x, y, r)
    d.rectangle([0, 360, W, 400], fill=(200, 185, 150))                      # gravel path
    # bench: back rest, seat, legs
    for k in range(3):
        d.rectangle([210, 250 + 22 * k, 590, 265 + 22 * k], fill=(150, 100, 55), outline=(100, 65, 35))
    d.rectangle([200, 320, 600, 340], fill=(160, 108, 60), outline=(100, 65, 35))
    for x in (225, 565):
        d.rectangle([x, 340, x + 16, 395], fill=(70, 70, 75))
    # grey cat sitting on the seat
    d.ellipse([340, 230, 450, 330], fill=(130, 130, 138))                   # body
    d.ellipse([362, 170, 432, 240], fill=(140, 140, 148))                   # head
    d.polygon([(366, 190), (372, 150), (392, 178)], fill=(140, 140, 148))   # ears
    d.polygon([(428, 190), (422, 150), (402, 178)], fill=(140, 140, 148))
    d.ellipse([380, 198, 390, 208], fill=(60, 160, 80))                     # eyes
    d.ellipse([405, 198, 415, 208], fill=(60, 160, 80))
    d.polygon([(394, 214), (400, 214), (397, 219)], fill=(230, 150, 160))   # nose
    d.line([(450, 310), (490, 300), (500, 270)], fill=(130, 130, 138), width=12)  # tail
    return img, (320, 135, 520, 345)


def hills() -> Image.Image:
    img = Image.new("RGB", (W, H))
    d = ImageDraw.Draw(img)
    _sky_and_grass(d, 300)
    for cx, cy, rx, ry, col in ((180, 340, 320, 120, (80, 150, 70)), (560, 330, 300, 110, (70, 140, 65)),
                                (380, 400, 420, 110, (95, 165, 80))):
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=col)
    for x, y, w in ((120, 80, 90), (420, 60, 120), (640, 110, 70)):           # clouds
        for k in range(3):
            d.ellipse([x + k * w // 3, y - 18 + 10 * (k % 2), x + k * w // 3 + w // 2, y + 22], fill=(250, 250, 252))
    return img


def balloon() -> Image.Image:
    img = Image.new("RGB", (384, 384), (135, 195, 245))
    d = ImageDraw.Draw(img)
    for k in range(6):                                                     # striped envelope
        col = (220, 50, 45) if k % 2 == 0 else (250, 200, 60)
        d.pieslice([92, 40, 292, 260], 180 + 30 * k, 210 + 30 * k, fill=col)
    d.ellipse([92, 40, 292, 260], outline=(120, 30, 30), width=3)
    d.rectangle([92, 150, 292, 150], fill=(120, 30, 30))
    for k in range(6):
        col = (220, 50, 45) if k % 2 == 0 else (250, 200, 60)
        x0 = 92 + k * 200 / 6
        d.polygon([(x0, 150), (x0 + 200 / 6, 150), (172 + (k + 1) * 40 / 6, 270), (172 + k * 40 / 6, 270)], fill=col)
    d.line([(175, 270), (178, 310)], fill=(90, 60, 40), width=2)
    d.line([(209, 270), (206, 310)], fill=(90, 60, 40), width=2)
    d.rectangle([170, 310, 214, 345], fill=(150, 100, 55), outline=(90, 60, 40))
    return img


def house() -> Image.Image:
    img = Image.new("RGB", (384, 384), (95, 165, 80))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, 384, 150], fill=(150, 200, 245))
    d.rectangle([90, 170, 294, 330], fill=(200, 50, 45), outline=(120, 30, 30), width=3)
    d.polygon([(70, 175), (192, 80), (314, 175)], fill=(110, 110, 118))
    d.rectangle([170, 250, 214, 330], fill=(95, 60, 35))
    for x in (110, 236):
        d.rectangle([x, 200, x + 40, 236], fill=(200, 225, 250), outline=(240, 240, 240), width=3)
    return img


def with_hole(img: Image.Image, box, feather: int = 0) -> Image.Image:
    """RGBA: transparent (the edit region, Load Image's MASK = 1) inside ``box``."""
    alpha = Image.new("L", img.size, 255)
    ImageDraw.Draw(alpha).ellipse(box, fill=0)
    if feather:
        alpha = alpha.filter(ImageFilter.GaussianBlur(feather))
    out = img.convert("RGBA")
    out.putalpha(alpha)
    return out


IMAGES = {
    # Edit Region Preview, KV-Edit and SpotEdit: the cat is the edit region
    "precise_edit_cat_on_bench.png": lambda: with_hole(*cat_on_bench()),
    # PIXELS: region 1 (the balloon) in the sky, region 2 (the house) on the left hill
    "precise_edit_hills.png": lambda: with_hole(hills(), (470, 50, 690, 270)),
    "precise_edit_hills_region_2.png": lambda: with_hole(hills(), (90, 230, 290, 400)),
    "precise_edit_balloon.png": balloon,
    "precise_edit_house.png": house,
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, make in IMAGES.items():
        img = make()
        img.save(OUT / name, optimize=True)
        print(f"wrote {OUT.name}/{name} {img.size[0]}x{img.size[1]} {(OUT / name).stat().st_size // 1024} KiB")


if __name__ == "__main__":
    np.random.seed(0)
    main()

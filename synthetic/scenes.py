"""Seeded scenes of simple shapes, their captions, and edit pairs with exact masks.

An image is ``SIZE`` x ``SIZE`` with one to three objects, each alone in one cell of a 3 x 3
grid (so objects never overlap and every mask is exact), on a low-saturation background
(gradient, stripes, checkers or noise) that no object colour comes near.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

SIZE = 96          # the layout's unit: object sizes and offsets are given at this size, render() scales them
# The 16-channel side's diffusion models (FLUX t2i, Kontext-style) render at 192 pixels: an object is then
# 4.5-6.5 latent cells wide (2-3 at 96, 3-4.5 at 128), which an 8x VAE keeps recognisable far more often
# (vae16 round trip, objects right: 25 % at 96, 54 % at 128, 79 % at 192) and the small models learn shapes
# from (README). vae16 itself was trained on 128-pixel renders (VAE16_SIZE; it is convolutional and works
# at 192 unchanged). The SD1.5-class side (sd, ip2p) renders at UNET_SIZE, which every trainer and
# evaluation of that side reads; its vae4 was trained on 128-pixel renders (VAE4_SIZE) and, convolutional
# too, keeps more objects at 192 (round trip, objects right: 22.5 % at 96, 45.7 % at 128, 66.7 % at 192).
FLUX_SIZE = 192
VAE16_SIZE = 128
VAE4_SIZE = 128
UNET_SIZE = 192
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 40), "purple": (150, 60, 190), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star")
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")  # row-major over the 3 x 3 grid
BACKGROUND_COLOURS = {"gray": (150, 150, 150), "beige": (200, 188, 160), "slate": (100, 112, 126)}
BACKGROUND_KINDS = ("gradient", "striped", "checkered", "noisy")
EDIT_KINDS = ("colour", "shape", "add", "remove", "move")
HALF_MIN, HALF_MAX, JITTER = 9, 13, 3


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    cell: int          # index into POSITIONS
    half: int          # half extent in pixels
    dx: int = 0        # jitter of the centre from the cell centre
    dy: int = 0

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def centre(self, size: int = SIZE) -> tuple[float, float]:
        step = size / 3
        return ((self.cell % 3 + 0.5) * step + self.dx, (self.cell // 3 + 0.5) * step + self.dy)

    def mask(self, size: int = SIZE) -> np.ndarray:
        """Exact boolean mask of the object in a ``size`` x ``size`` image (its extent scaled from SIZE)."""
        cx, cy = self.centre(size)
        return shape_mask(self.shape, cx, cy, self.half * size / SIZE, size)

    def phrase(self) -> str:
        return f"{article(self.colour)} {self.colour} {self.shape} at the {self.position}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    bg_colour: str
    bg_kind: str
    bg_seed: int

    def caption(self) -> str:
        parts = " and ".join(o.phrase() for o in self.objects) or "nothing"
        return f"{parts} on a {self.bg_colour} {self.bg_kind} background"


def shape_mask(shape: str, cx: float, cy: float, half: float, size: int = SIZE) -> np.ndarray:
    """Exact boolean mask of a shape, tested at pixel centres."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    x, y = (xs - cx) / half, (ys - cy) / half
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return (np.abs(x) <= 0.85) & (np.abs(y) <= 0.85)
    if shape == "triangle":  # apex up, base at the bottom
        return (y <= 0.9) & (y >= -1.0) & (np.abs(x) <= (y + 1.0) / 1.9)
    if shape == "star":  # five points, inner radius 0.45
        r, a = np.hypot(x, y), np.arctan2(x, -y)
        k = np.mod(a, 2 * np.pi / 5) / (2 * np.pi / 5)   # 0 at a point, 0.5 between points
        t = np.abs(k - 0.5) * 2                            # 1 at a point, 0 between
        return r <= 0.45 + 0.55 * t ** 1.6
    raise ValueError(f"unknown shape {shape!r}")


def background(colour: str, kind: str, seed: int, size: int = SIZE) -> np.ndarray:
    base = np.array(BACKGROUND_COLOURS[colour], dtype=np.float64)
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / size
    if kind == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        v = (np.cos(ang) * (xs - 0.5) + np.sin(ang) * (ys - 0.5)) * 50
    elif kind == "striped":
        period = rng.integers(8, 20)
        coord = xs if rng.random() < 0.5 else ys
        v = np.where(np.mod(np.floor(coord * size / period), 2) == 0, 18.0, -18.0)
    elif kind == "checkered":
        period = rng.integers(8, 20)
        v = np.where(np.mod(np.floor(xs * size / period) + np.floor(ys * size / period), 2) == 0, 18.0, -18.0)
    elif kind == "noisy":
        coarse = rng.normal(0, 1, (size // 8, size // 8))
        v = np.kron(coarse, np.ones((8, 8))) * 8 + rng.normal(0, 6, (size, size))
    else:
        raise ValueError(f"unknown background {kind!r}")
    return np.clip(base[None, None, :] + v[..., None], 0, 255)


def render(scene: Scene, size: int = SIZE) -> tuple[np.ndarray, list[np.ndarray]]:
    """(H, W, 3) uint8 image and each object's exact mask."""
    img = background(scene.bg_colour, scene.bg_kind, scene.bg_seed, size)
    masks = []
    for o in scene.objects:
        m = o.mask(size)
        img[m] = COLOURS[o.colour]
        masks.append(m)
    return img.round().astype(np.uint8), masks


def random_object(rng: np.random.Generator, cell: int) -> Obj:
    return Obj(colour=str(rng.choice(list(COLOURS))), shape=str(rng.choice(SHAPES)), cell=int(cell),
               half=int(rng.integers(HALF_MIN, HALF_MAX + 1)), dx=int(rng.integers(-JITTER, JITTER + 1)),
               dy=int(rng.integers(-JITTER, JITTER + 1)))


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    cells = rng.choice(9, size=n, replace=False)
    return Scene(objects=tuple(random_object(rng, c) for c in sorted(cells)),
                 bg_colour=str(rng.choice(list(BACKGROUND_COLOURS))), bg_kind=str(rng.choice(BACKGROUND_KINDS)),
                 bg_seed=int(rng.integers(0, 2**31)))


@dataclass(frozen=True)
class EditPair:
    kind: str              # one of EDIT_KINDS
    source: Scene
    target: Scene
    instruction: str
    subject: Obj | None    # the object as it is in the source (None for add)
    result: Obj | None     # the object as it must be in the target (None for remove)

    def mask(self, size: int = SIZE) -> np.ndarray:
        """Exact mask of every pixel that differs in meaning between source and target."""
        m = np.zeros((size, size), dtype=bool)
        for o in (self.subject, self.result):
            if o is not None:
                m |= o.mask(size)
        return m


def _unique_shape(scene: Scene) -> list[int]:
    shapes = [o.shape for o in scene.objects]
    return [i for i, s in enumerate(shapes) if shapes.count(s) == 1]


def random_edit(rng: np.random.Generator, kind: str | None = None) -> EditPair:
    """A source scene and one edit of it. Edits name the object by its shape, which the
    generator keeps unique in the scene, so every instruction has one reading."""
    kind = kind or str(rng.choice(EDIT_KINDS))
    while True:
        src = random_scene(rng, n_objects=int(rng.integers(2 if kind == "remove" else 1, 3 if kind == "add" else 4)))
        pick = _unique_shape(src)
        if kind != "add" and not pick:
            continue
        objs = list(src.objects)
        free = [c for c in range(9) if c not in {o.cell for o in objs}]
        if kind == "add":
            new = random_object(rng, int(rng.choice(free)))
            if new.shape in {o.shape for o in objs}:
                continue
            tgt_objs, subject, result = sorted(objs + [new], key=lambda o: o.cell), None, new
            instruction = f"add {article(new.colour)} {new.colour} {new.shape} at the {new.position}"
        else:
            i = int(rng.choice(pick))
            subject = objs[i]
            if kind == "colour":
                result = dataclasses.replace(subject, colour=str(rng.choice([c for c in COLOURS if c != subject.colour])))
                instruction = f"make the {subject.shape} {result.colour}"
            elif kind == "shape":
                others = {o.shape for o in objs}
                result = dataclasses.replace(subject, shape=str(rng.choice([s for s in SHAPES if s not in others])))
                instruction = f"turn the {subject.shape} into {article(result.shape)} {result.shape}"
            elif kind == "remove":
                result = None
                instruction = f"remove the {subject.shape}"
            elif kind == "move":
                result = dataclasses.replace(subject, cell=int(rng.choice(free)))
                instruction = f"move the {subject.shape} to the {result.position}"
            else:
                raise ValueError(f"unknown edit kind {kind!r}")
            tgt_objs = [o for j, o in enumerate(objs) if j != i] + ([result] if result else [])
            tgt_objs.sort(key=lambda o: o.cell)
        tgt = dataclasses.replace(src, objects=tuple(tgt_objs))
        return EditPair(kind, src, tgt, instruction, subject, result)


def scenes(seed: int, n: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [random_scene(rng) for _ in range(n)]


def edits(seed: int, n: int, kinds=EDIT_KINDS) -> list[EditPair]:
    """``n`` edit pairs, the kinds in turn, from one seed."""
    rng = np.random.default_rng(seed)
    return [random_edit(rng, kinds[i % len(kinds)]) for i in range(n)]

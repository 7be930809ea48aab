"""Spatial phrases in edit instructions -> regions and moves (the detail measure is in ``detail.py``).

Pure Python and torch, no ComfyUI. The words live in data files (``kernels/data/spatial_<lang>.json``,
one per language: English and Vietnamese ship), so a language is added without code. The geometry
is language-free and lives in ``kernels/places.py``:

* **absolute places**: corners (a third of each side), quarters, halves, thirds, edges (a fifth),
  the centre (the middle half of each side); several found together are intersected
  ("on the left ... at the top" = the top-left quarter);
* **relative places** given the object's box ``(x0, y0, x1, y1)`` of width ``w``, height ``h``:
  above = ``(x0, y0 - h, x1, y0)``, below, left of, right of likewise, next to = left of U right of;
* **sizes** ("small", "large") scale the place around its anchor (the image border or the object
  side it touches; the centre otherwise);
* **moves** ("move it 10% to the right", "move it left", "move it to the top") give an offset in
  fractions of the image (default amount 25%); a target place ("to the top") needs the object box.
  With the object box, an offset that would push the object partly out of the image is clipped
  (with a notice); one that would put it entirely outside is an error.

A table entry is ``"phrase": "region"`` or ``"phrase": {"region": ..., "needs_preposition": bool,
"as_relation": ...}``: short words ("left", "top") count only after a preposition ("on the left"),
and a place word followed by ``of`` + an object ("left of the tree"; in Vietnamese also directly
"bên trái cái ghế") becomes the relation ``as_relation``. An instruction with no spatial phrase is
returned unchanged (never a guess).
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .places import (REGIONS, SpatialError, _box_and, _clip, _empty, _shift, box_of_mask,  # noqa: F401
                     boxes_mask, clip_offset, iou, relation_boxes, scale_box, target_offset)

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_MOVE = 0.25

RELATIONS = ("above", "below", "left_of", "right_of", "next_to")
IMAGE_EQUIVALENT = {"above": "top_half", "below": "bottom_half", "left_of": "left_half", "right_of": "right_half",
                    "next_to": None}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_TOKEN = re.compile(r"(?:(?<![^\W_])-)?\d+(?:[.,]\d+)?|[^\W\d_]+|[%,.;!?]")  # a sign only after a space
_HYPHEN = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")  # "bottom-right" reads as "bottom right"


def _fold(text: str) -> str:
    """Lower case with hyphens between letters as spaces (the same length: token spans stay valid)."""
    return _HYPHEN.sub(" ", unicodedata.normalize("NFC", text).lower())


class MissingObjectMask(SpatialError):
    """A relative place or a move target was found but no object box was given."""


# ------------------------------------------------------------------------------- tables

@dataclass
class Table:
    language: str
    name: str
    raw: dict
    regions: dict = field(default_factory=dict)   # tuple(tokens) -> dict(region, needs_preposition, as_relation)
    relations: dict = field(default_factory=dict)  # tuple(tokens) -> relation
    prepositions: list = field(default_factory=list)
    image_words: list = field(default_factory=list)
    links: list = field(default_factory=list)
    articles: set = field(default_factory=set)
    stops: set = field(default_factory=set)
    sizes: dict = field(default_factory=dict)
    move_verbs: list = field(default_factory=list)
    directions: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    numbers: dict = field(default_factory=dict)       # number words: "ten" -> 10
    multipliers: dict = field(default_factory=dict)   # "hundred" -> 100 ("mươi" -> 10)
    number_joiners: set = field(default_factory=set)  # words inside a number ("two hundred and five")
    fractions: dict = field(default_factory=dict)     # "half" -> 0.5 ("one and a half")
    number_articles: set = field(default_factory=set)  # "a" in "a hundred", "a half"
    amount_words: dict = field(default_factory=dict)
    fillers: list = field(default_factory=list)
    locatives: list = field(default_factory=list)
    leading_attributes: set = field(default_factory=set)  # words that end an object phrase after its noun
    attribute_words: set = field(default_factory=set)     # the detail table's attributes (sizes, colours...)
    direct_relation: bool = False


def _words(text: str) -> tuple[str, ...]:
    return tuple(m.group(0) for m in _TOKEN.finditer(_fold(text)))


def _phrases(items) -> list[tuple[str, ...]]:
    return sorted({_words(p) for p in items}, key=len, reverse=True)


def available_languages() -> list[str]:
    return sorted(p.stem.split("_", 1)[1] for p in DATA_DIR.glob("spatial_*.json"))


@lru_cache(maxsize=None)
def load_table(language: str) -> Table:
    path = DATA_DIR / f"spatial_{language}.json"
    if not path.is_file():
        raise SpatialError(f"no phrase table for language '{language}' (have: {', '.join(available_languages())})")
    raw = json.loads(path.read_text(encoding="utf-8"))
    t = Table(language=raw["language"], name=raw.get("name", language), raw=raw)
    for phrase, spec in raw.get("regions", {}).items():
        spec = {"region": spec} if isinstance(spec, str) else dict(spec)
        if spec["region"] not in REGIONS:
            raise SpatialError(f"{path.name}: '{phrase}' names an unknown region '{spec['region']}'")
        t.regions[_words(phrase)] = spec
    for phrase, rel in raw.get("relations", {}).items():
        if rel not in RELATIONS:
            raise SpatialError(f"{path.name}: '{phrase}' names an unknown relation '{rel}'")
        t.relations[_words(phrase)] = rel
    t.prepositions = _phrases(raw.get("prepositions", []))
    t.image_words = _phrases(raw.get("image_words", []))
    t.links = _phrases(raw.get("relation_link", []))
    t.articles = {w for p in raw.get("articles", []) for w in _words(p)}
    t.stops = {_words(p) for p in raw.get("object_stop", [])}
    t.sizes = {_words(k): float(v) for k, v in raw.get("sizes", {}).items()}
    t.move_verbs = _phrases(raw.get("move_verbs", []))
    t.directions = {_words(k): v for k, v in raw.get("directions", {}).items()}
    t.units = {_words(k): v for k, v in raw.get("amount_units", {}).items()}
    nw = raw.get("number_words", {})
    t.numbers = {w: float(v) for k, v in nw.get("values", {}).items() for w in _words(k)}
    t.multipliers = {w: float(v) for k, v in nw.get("multipliers", {}).items() for w in _words(k)}
    t.number_joiners = {w for p in nw.get("joiners", []) for w in _words(p)}
    t.fractions = {w: float(v) for k, v in nw.get("fractions", {}).items() for w in _words(k)}
    t.number_articles = {w for p in nw.get("articles", []) for w in _words(p)}
    t.amount_words = {_words(k): float(v) for k, v in raw.get("amount_words", {}).items()}
    t.fillers = _phrases(raw.get("move_fillers", []))
    t.locatives = _phrases(raw.get("move_locatives", []))
    t.leading_attributes = {w for p in raw.get("edit_words_after_object", []) for w in _words(p)}
    t.attribute_words = {w for p in raw.get("detail", {}).get("attributes", []) for w in _words(p)}
    t.direct_relation = bool(raw.get("direct_relation", False))
    return t


# ------------------------------------------------------------------------------ results

@dataclass
class Parsed:
    """What was understood. ``kind``: "none" (not spatial), "region" or "move"."""
    kind: str
    text: str                                   # the instruction with the spatial phrase removed
    language: str
    boxes: list = field(default_factory=list)   # union of boxes (x0, y0, x1, y1), fractions
    offset: tuple = (0.0, 0.0)                  # move: (dx, dy) fractions of width / height
    phrases: list = field(default_factory=list)  # what matched, for the notice
    notes: list = field(default_factory=list)
    relations: int = 0                          # spatial relations found (for the detail measure)

    def describe(self) -> str:
        if self.kind == "none":
            return "no spatial phrase understood: the instruction passes through unchanged, empty region"
        found = ", ".join(self.phrases)
        if self.kind == "move":
            return (f"move ({found}): offset x {100 * self.offset[0]:+.1f}% y {100 * self.offset[1]:+.1f}% of the "
                    f"image; instruction: '{self.text}'")
        bs = "; ".join("x %.2f-%.2f y %.2f-%.2f" % (b[0], b[2], b[1], b[3]) for b in self.boxes) or "empty"
        return f"region ({found}): {bs}; instruction: '{self.text}'"


# ------------------------------------------------------------------------------ matching

class _Tokens:
    def __init__(self, text: str):
        self.text = unicodedata.normalize("NFC", text)
        lower = _fold(self.text)
        if len(lower) != len(self.text):  # a character whose lower case is longer: no hyphen folding
            lower = self.text.lower()
        self.spans = [(m.start(), m.end()) for m in _TOKEN.finditer(lower)]
        self.words = [lower[a:b] for a, b in self.spans]
        self.used = [False] * len(self.words)

    def at(self, i: int, phrase: tuple) -> bool:
        return tuple(self.words[i:i + len(phrase)]) == phrase and not any(self.used[i:i + len(phrase)])

    def match_any(self, i: int, phrases) -> tuple | None:
        for p in phrases:
            if p and self.at(i, p):
                return p
        return None

    def ends_with_any(self, j: int, phrases) -> tuple | None:
        """A phrase ending just before token ``j``."""
        for p in phrases:
            if p and j - len(p) >= 0 and self.at(j - len(p), p):
                return p
        return None

    def use(self, a: int, b: int) -> None:
        for k in range(a, b):
            self.used[k] = True

    def remainder(self, dangling=()) -> str:
        """The text without the used tokens (and without ``dangling`` words left at its ends)."""
        for order in (range(len(self.words)), range(len(self.words) - 1, -1, -1)):
            for k in order:
                if self.used[k]:
                    continue
                if (self.words[k],) in dangling or not self.words[k].lstrip("-")[:1].isalnum():
                    self.used[k] = True
                    continue
                break
        out, pos, prev = [], 0, False
        for (a, b), used in zip(self.spans, self.used):
            if used:
                out.append(" " if prev else self.text[pos:a])  # "bottom-right": the hyphen goes too
                pos = b
            prev = used
        out.append(self.text[pos:])
        s = re.sub(r"\s+", " ", "".join(out)).strip()
        s = re.sub(r"\s+([,.;!?%])", r"\1", s)
        s = re.sub(r"([,;])(\s*[,;.!?])+", r"\1", s)
        return s.strip(" ,;").strip()


def _find(tokens: _Tokens, table: dict) -> list[tuple[int, int, object]]:
    """Non-overlapping longest matches of a phrase table (``tuple(tokens) -> value``)."""
    phrases = sorted(table, key=len, reverse=True)
    found = []
    i = 0
    taken = list(tokens.used)
    while i < len(tokens.words):
        hit = None
        for p in phrases:
            if tuple(tokens.words[i:i + len(p)]) == p and not any(taken[i:i + len(p)]):
                hit = p
                break
        if hit:  # the scan resumes after the hit, so no later match can overlap it
            found.append((i, i + len(hit), table[hit]))
            i += len(hit)
        else:
            i += 1
    return found


def _object_phrase_end(tokens: _Tokens, j: int, t: Table) -> int:
    """End of the object's noun phrase that starts at token ``j`` (articles, then words up to a stop
    word, a punctuation mark or the end; in English also up to a colour after the noun: "next to the
    plate blue", while "next to the street light" keeps its compound noun)."""
    attrs = t.leading_attributes
    k, noun = j, False
    while k < len(tokens.words):
        if any(tuple(tokens.words[k:k + len(s)]) == s for s in t.stops) or tokens.used[k]:
            break
        w = tokens.words[k]
        if noun and w in attrs:
            break  # "next to the plate blue": a colour after the noun is the edit, not the object
        noun = noun or (w not in t.attribute_words and w not in t.articles)  # "the big red plate": no noun yet
        k += 1
    return k


def _number_words(tokens: _Tokens, k: int, t: Table) -> tuple[float, int] | None:
    """A number written in words from token ``k`` ("ten", "twenty five", "two hundred and fifty",
    "a hundred", "one and a half", "hai mươi lăm"): (value, tokens taken), or None. A multiplier
    under 100 scales the words since the last larger one ("hai mươi lăm" = 2 x 10 + 5), a hundred
    scales the words before it within its thousand ("fifteen hundred"), a thousand and above all
    before it ("two hundred thousand" = 200 x 1000). "a" counts as one before a multiplier ("a
    hundred"). A fraction word is one only after "a" ("a half", "one and a half") or as "half a"
    before a unit or a multiplier ("half a hundred"; not after "the"), and ends the number: "the quarter
    twenty pixels" is the quarter, then 20."""
    total, hundreds, small, n, last = 0.0, 0.0, 0.0, 0, 0
    words = tokens.words
    article = False   # the word before was "a"
    for j in range(k, len(words)):
        w = words[j]
        if tokens.used[j]:
            break
        nxt = words[j + 1] if j + 1 < len(words) and not tokens.used[j + 1] else None
        if w in t.fractions:
            if article:                                              # "a half", "one and a half"
                return total + hundreds + small + t.fractions[w], n + 1
            if j == k and nxt in t.number_articles and j + 2 < len(words) and not tokens.used[j + 2] and \
                    not (k and words[k - 1] in t.articles):         # "the quarter a hundred": a noun
                after = words[j + 2]
                if after in t.multipliers:                           # "half a hundred"
                    return t.fractions[w] * t.multipliers[after], 3
                if after not in t.numbers:                           # "half a percent"
                    return t.fractions[w], 2
            break
        article = False
        if w in t.numbers:
            small += t.numbers[w]
        elif w in t.multipliers:
            m = t.multipliers[w]
            if m < 100:
                small = max(small, 1.0) * m
            elif m == 100:
                hundreds, small = hundreds + max(small, 1.0) * m, 0.0
            else:
                total, hundreds, small = total + max(hundreds + small, 1.0) * m, 0.0, 0.0
        elif w in t.number_articles and (nxt in t.multipliers or nxt in t.fractions):
            n += 1   # "a" before "hundred" / "half": the multiplier or fraction counts it
            article = True
            continue
        elif w in t.number_joiners and n:
            n += 1
            continue
        else:
            break
        n += 1
        last = n
    return (total + hundreds + small, last) if last else None


def _starts_object(tokens: _Tokens, j: int, t: Table) -> bool:
    if j >= len(tokens.words) or tokens.used[j]:
        return False
    w = tokens.words[j]
    if not w[0].isalpha() or any(tuple(tokens.words[j:j + len(s)]) == s for s in t.stops):
        return False
    if tokens.match_any(j, t.image_words) or tokens.match_any(j, t.prepositions):
        return False
    return not any(tuple(tokens.words[j:j + len(s)]) == s for s in t.sizes)


# ------------------------------------------------------------------------------- parsing

def detect_language(text: str) -> str:
    """The table whose phrases cover most of the instruction (English on a tie)."""
    best, score = "en", -1
    for lang in available_languages():
        t = load_table(lang)
        tokens = _Tokens(text)
        n = sum(b - a for a, b, _ in _find(tokens, {**t.regions, **{k: 1 for k in t.relations},
                                                    **{p: 1 for p in t.move_verbs}, **t.directions}))
        if n > score or (n == score and lang == "en"):
            best, score = lang, n
    return best


def parse(text: str, language: str = "auto", object_box=None, image_size=None) -> Parsed:
    """Understand the spatial part of ``text``.

    ``object_box``: the object's box ``(x0, y0, x1, y1)`` in fractions (needed for relative places
    and move targets); ``image_size``: ``(width, height)`` in pixels (for moves given in pixels).
    """
    if not isinstance(text, str) or not text.strip():
        raise SpatialError("the instruction is empty; write what to change (e.g. 'add a tree in the "
                           "bottom right corner')")
    lang = detect_language(text) if language == "auto" else language
    t = load_table(lang)
    tokens = _Tokens(text)
    verbs = [(i, p) for i in range(len(tokens.words)) if (p := tokens.match_any(i, t.move_verbs))]
    if verbs:
        parsed = _parse_move(tokens, t, verbs, object_box, image_size)
        if parsed is not None:
            return parsed
        tokens = _Tokens(text)
    return _parse_region(tokens, t, object_box)


def _preposition_before(tokens: _Tokens, i: int, t: Table) -> int:
    """Start of a preposition (e.g. 'in the') right before token ``i``, or ``i`` when there is none."""
    p = tokens.ends_with_any(i, t.prepositions)
    return i - len(p) if p else i


def _take_image_words(tokens: _Tokens, j: int, t: Table) -> int:
    p = tokens.match_any(j, t.image_words)
    return j + len(p) if p else j


def _dangling(t: Table) -> set:
    """Words that make no sense alone at either end of what is left ('and', 'in the', ...)."""
    return {s for s in t.stops if len(s) == 1} | {p[-1:] for p in t.prepositions}


def _parse_region(tokens: _Tokens, t: Table, object_box) -> Parsed:
    boxes_and: list = []        # absolute places, intersected
    relations: list = []        # (relation, object phrase)
    phrases: list = []
    # relations first: "to the left of the tree" beats "to the left"
    candidates = sorted([(a, b, ("rel", v)) for a, b, v in _find(tokens, t.relations)] +
                        [(a, b, ("reg", v)) for a, b, v in _find(tokens, t.regions)],
                        key=lambda c: (-(c[1] - c[0]), c[0]))
    chosen = []
    for a, b, v in candidates:
        if any(tokens.used[a:b]) or any(not (b <= c0 or a >= c1) for c0, c1, _ in chosen):
            continue
        chosen.append((a, b, v))
    chosen.sort()
    sizes = []
    for a, b, (kind, v) in chosen:
        if any(tokens.used[a:b]):
            continue
        start = _preposition_before(tokens, a, t)
        if kind == "reg":
            spec = v
            if spec.get("needs_preposition") and start == a:
                continue
            j = b
            img = _take_image_words(tokens, j, t)
            rel = spec.get("as_relation")
            link = tokens.match_any(j, t.links) if img == j else None
            if rel and img == j and (link and _starts_object(tokens, j + len(link), t) or
                                     (t.direct_relation and _starts_object(tokens, j, t))):
                obj_start = j + (len(link) if link else 0)
                end = _object_phrase_end(tokens, obj_start, t)
                relations.append((rel, " ".join(tokens.words[obj_start:end])))
                phrases.append(" ".join(tokens.words[a:end]))
                tokens.use(start, end)
                continue
            boxes_and.append(REGIONS[spec["region"]])
            phrases.append(" ".join(tokens.words[a:b]))
            tokens.use(start, img)
        else:
            j = b
            img = _take_image_words(tokens, j, t)
            if img > j:
                eq = IMAGE_EQUIVALENT[v]
                if eq is None:
                    continue
                boxes_and.append(REGIONS[eq])
                phrases.append(" ".join(tokens.words[a:img]))
                tokens.use(start, img)
                continue
            if not _starts_object(tokens, j, t):
                continue
            end = _object_phrase_end(tokens, j, t)
            relations.append((v, " ".join(tokens.words[j:end])))
            phrases.append(" ".join(tokens.words[a:end]))
            tokens.use(start, end)
    if not boxes_and and not relations:
        return Parsed("none", tokens.text.strip(), t.language)
    for a, b, f in _find(tokens, t.sizes):
        sizes.append((" ".join(tokens.words[a:b]), f))
    notes = []
    boxes: list = []
    anchor = None
    if relations:
        if object_box is None:
            rel, obj = relations[0]
            raise MissingObjectMask(f"'{phrases[0]}' is a place relative to an object ({obj or 'the object'}); "
                                    f"connect that object's mask to 'object_mask'")
        for rel, _ in relations:
            boxes += relation_boxes(rel, object_box)
        if boxes_and:
            whole = boxes_and[0]
            for b in boxes_and[1:]:
                whole = _box_and(whole, b)
            boxes = [c for c in (_box_and(b, whole) for b in boxes) if not _empty(c)]
        if not boxes:
            notes.append("there is no room there inside the image (the object touches that border): empty region")
        if len(relations) == 1 and relations[0][0] in ("above", "below", "left_of", "right_of") and boxes:
            x0, y0, x1, y1 = object_box
            anchor = {"above": ((x0 + x1) / 2, y0), "below": ((x0 + x1) / 2, y1),
                      "left_of": (x0, (y0 + y1) / 2), "right_of": (x1, (y0 + y1) / 2)}[relations[0][0]]
    else:
        whole = boxes_and[0]
        for b in boxes_and[1:]:
            whole = _box_and(whole, b)
        if _empty(whole):
            notes.append("the places named do not overlap: empty region")
        else:
            boxes = [whole]
    if sizes and boxes:
        f = sizes[0][1]
        boxes = [scale_box(b, f, anchor) for b in boxes]
        phrases.append(sizes[0][0])
    out = Parsed("region", tokens.remainder(_dangling(t)), t.language, boxes=boxes, phrases=phrases, notes=notes,
                 relations=len(relations) + len(boxes_and))
    return out


def _parse_move(tokens: _Tokens, t: Table, verbs, object_box, image_size) -> Parsed | None:
    def located(a):  # "the star on the left": a place describing the object, not where it goes
        p = tokens.ends_with_any(a, t.locatives)  # ("move it at the top": right after the pronoun, it is)
        return p is not None and tokens.ends_with_any(a - len(p), t.fillers) is None

    places = _find(tokens, t.regions)
    inside = [(a, b) for a, b, spec in places if located(a) and b - a > 1]
    dirs = [(a, b, d) for a, b, d in _find(tokens, t.directions)
            if not located(a) and not any(pa <= a and b <= pb for pa, pb in inside)]
    for a, b, d in dirs:
        link = tokens.match_any(b, t.links)
        if link and _starts_object(tokens, b + len(link), t):
            raise SpatialError(f"'{' '.join(tokens.words[a:_object_phrase_end(tokens, b + len(link), t)])}' is a place "
                               f"relative to another object, which a move cannot take; give the move as an amount "
                               f"and direction (e.g. 'move it 20% to the {d}') or a place in the image ('to the "
                               f"{d} edge')")
    targets = []
    for a, b, spec in places:
        if spec.get("needs_preposition") and _preposition_before(tokens, a, t) == a:
            continue
        if any(da <= a and b <= db for da, db, _ in dirs):
            continue  # "to the left" is a direction, not the place "left"
        if located(a):
            continue
        targets.append((a, b, spec["region"]))
    # a target place wins over directions (the "right" in "bottom right corner" belongs to the place)
    if not dirs and not targets:
        return None
    phrases = []
    for i, p in verbs[:1]:
        tokens.use(i, i + len(p))
    # amounts: a number followed by a unit (a bare number next to a direction reads as percent, with a
    # note), or words like "slightly"; with several, each direction takes the nearest one
    amounts = []  # (token position, amount, unit)
    notes = []
    k = 0
    while k < len(tokens.words):
        w = tokens.words[k]
        start = tokens.spans[k][0]
        glued = start > 0 and (tokens.text[start - 1].isalpha() or
                               (tokens.text[start - 1] == "-" and start > 1 and tokens.text[start - 2].isalpha()))
        free = not tokens.used[k] and not glued
        digits = free and re.fullmatch(r"-?\d+(?:[.,]\d+)?", w)
        # a number in words counts only before a unit ("ten percent"; "the three cats" is no amount)
        spelled = _number_words(tokens, k, t) if free and not digits else None
        if digits or spelled:
            size = spelled[1] if spelled else 1
            u = tokens.match_any(k + size, sorted(t.units, key=len, reverse=True))
            bare = not spelled and u is None and any(a == k + 1 or b == k for a, b, _ in dirs)
            if u or bare:
                n = size + (len(u) if u else 0)
                value = spelled[0] if spelled else float(w.replace(",", "."))
                if value < 0:   # signed: "-10% to the right" moves it left; say so where the user reads
                    notes.append(f"'{' '.join(tokens.words[k:k + n])}' is negative: it moves the other way "
                                 "than the direction word says")
                amounts.append((k, value, t.units[u] if u else "percent"))
                phrases.append(" ".join(tokens.words[k:k + n]))
                if bare:
                    notes.append(f"'{w}' has no unit: read as {w}% of the image")
                tokens.use(k, k + n)
                before = tokens.ends_with_any(k, t.fillers)
                if before:
                    tokens.use(k - len(before), k)
                k += n
                continue
        k += 1
    if not amounts:
        for a, b, f in _find(tokens, t.amount_words):
            amounts.append((a, f, "fraction"))
            phrases.append(" ".join(tokens.words[a:b]))
            tokens.use(a, b)
            break
    if not targets:
        dx = dy = 0.0
        if not amounts:
            amounts = [(0, DEFAULT_MOVE, "fraction")]
            notes.append(f"no amount given: moved by {100 * DEFAULT_MOVE:.0f}% of the image")
        for a, b, d in dirs:
            if any(tokens.used[a:b]):
                continue
            _, amount, unit = min(amounts, key=lambda m: min(abs(m[0] - a), abs(m[0] - (b - 1))))
            if unit == "pixels":
                if image_size is None:
                    raise SpatialError("a move in pixels needs the image size; connect 'image' (or give the move "
                                       "in %)")
                f = amount / (image_size[0] if d in ("left", "right") else image_size[1])
            else:
                f = amount / 100.0 if unit == "percent" else amount
            ux, uy = DIRECTIONS[d]
            dx, dy = dx + ux * f, dy + uy * f
            phrases.append(" ".join(tokens.words[a:b]))
            tokens.use(_preposition_before(tokens, a, t), b)
        offset = (dx, dy)
    else:
        a, b, region = targets[0]
        phrases.append(" ".join(tokens.words[a:b]))
        tokens.use(_preposition_before(tokens, a, t), _take_image_words(tokens, b, t))
        if object_box is None:
            raise MissingObjectMask(f"moving the object to '{phrases[-1]}' needs to know where it is now; "
                                    f"connect its mask to 'object_mask'")
        offset = target_offset(object_box, REGIONS[region])
    parsed = Parsed("move", tokens.remainder(_dangling(t)), t.language, offset=offset, phrases=phrases, notes=notes,
                    relations=1)
    if object_box is not None:
        parsed.offset, clip_note = clip_offset(object_box, offset)
        if clip_note:
            parsed.notes.append(clip_note)
        parsed.boxes = [_shift(object_box, parsed.offset)]
    return parsed

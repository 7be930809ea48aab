"""How detailed an edit instruction is (for InstructGuider's instruction-strength mode): objects,
attributes and spatial relations, counted with the language's phrase table (``kernels/data``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .spatial import SpatialError, _find, _parse_region, _Tokens, _words, detect_language, load_table, parse


@dataclass(frozen=True)
class Detail:
    objects: int
    attributes: int
    relations: int

    @property
    def count(self) -> int:
        return self.objects + self.attributes + self.relations


def detail(text: str, language: str = "auto") -> Detail:
    """How detailed an instruction is: objects (content words that are neither attributes, verbs
    nor stop words), attributes (colours, materials, sizes, styles... from the table) and spatial
    relations (places and moves found by :func:`parse`). Adding words never lowers a count."""
    if not isinstance(text, str) or not text.strip():
        return Detail(0, 0, 0)
    lang = detect_language(text) if language == "auto" else language
    t = load_table(lang)
    box = (0.25, 0.25, 0.75, 0.75)
    try:
        rel = parse(text, lang, object_box=box, image_size=(1024, 1024)).relations
    except SpatialError:
        rel = 1
    try:  # a move verb added to an instruction with places must not hide the places it names
        rel = max(rel, _parse_region(_Tokens(text), t, box).relations)
    except SpatialError:
        pass
    d = t.raw.get("detail", {})
    tokens = _Tokens(text)
    attrs = {_words(p): 1 for p in d.get("attributes", [])}
    n_attr = len(_find(tokens, attrs))
    for a, b, _ in _find(tokens, attrs):
        tokens.use(a, b)
    skip = {_words(p): 1 for p in list(d.get("stopwords", [])) + list(d.get("verbs", []))}
    skip.update({p: 1 for p in t.regions})
    skip.update({p: 1 for p in t.relations})
    skip.update({p: 1 for p in t.directions})
    skip.update({p: 1 for p in t.prepositions})
    skip.update({p: 1 for p in t.image_words})
    skip.update({p: 1 for p in t.units})
    skip.update({p: 1 for p in t.amount_words})
    for a, b, _ in _find(tokens, skip):
        tokens.use(a, b)
    n_obj = sum(1 for w, u in zip(tokens.words, tokens.used) if not u and w[0].isalpha())
    return Detail(n_obj, n_attr, rel)


def detail_strength(d: Detail, saturation: int = 8) -> float:
    """Detail as a number in [0, 1]: ``min(count, saturation) / saturation`` (monotone)."""
    if saturation < 1:
        raise SpatialError("saturation must be >= 1")
    return min(d.count, saturation) / saturation

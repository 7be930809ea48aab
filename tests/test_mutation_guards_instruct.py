"""SpatialInstruction's parser (kernels/spatial.py, kernels/places.py): what the node shows and
returns for an instruction, found unguarded by the mutation run (issue 14). The node passes on
``Parsed.text`` (the instruction without its place), the region, the offset, ``describe()`` (its
info output) and ``notes`` (its notices); ``relations`` feeds the detail measure."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from precise_edit.kernels import spatial as S

OBJ = (0.4, 0.3, 0.6, 0.5)

# (instruction, language, object box, image size) -> (describe(), notes, relations, language)
SHOWN = [
    (("add a tree in the bottom right corner", "en", None, None),
     "region (bottom right corner): x 0.67-1.00 y 0.67-1.00; instruction: 'add a tree'", [], 1),
    (("In the top left corner, add a red kite.", "en", None, None),
     "region (top left corner): x 0.00-0.33 y 0.00-0.33; instruction: 'add a red kite'", [], 1),
    (("add a tree, in the bottom right corner!", "en", None, None),
     "region (bottom right corner): x 0.67-1.00 y 0.67-1.00; instruction: 'add a tree'", [], 1),
    (("Add a hat ; in the top left corner , please", "en", None, None),
     "region (top left corner): x 0.00-0.33 y 0.00-0.33; instruction: 'Add a hat'", [], 1),
    (("add a bird in the top left corner of the image frame", "en", None, None),  # longest image words
     "region (top left corner): x 0.00-0.33 y 0.00-0.33; instruction: 'add a bird'", [], 1),
    (("put a lamp to the left of the sofa and make it red", "en", OBJ, None),
     "region (to the left of the sofa): x 0.20-0.40 y 0.30-0.50; instruction: 'put a lamp and make it red'", [], 1),
    (("put a lamp to the left of the red sofa and make it red", "en", OBJ, None),
     "region (to the left of the red sofa): x 0.20-0.40 y 0.30-0.50; instruction: 'put a lamp and make it red'",
     [], 1),
    (("put a lamp to the left of", "en", OBJ, None),  # no object named: not a place, nothing guessed
     "no spatial phrase understood: the instruction passes through unchanged, empty region", [], 0),
    (("put a lamp next to the sofa", "en", OBJ, None),
     "region (next to the sofa): x 0.20-0.40 y 0.30-0.50; x 0.60-0.80 y 0.30-0.50; instruction: 'put a lamp'", [], 1),
    # sizes scale around the object side the place touches
    (("put a small lamp above the table", "en", OBJ, None),
     "region (above the table, small): x 0.44-0.56 y 0.18-0.30; instruction: 'put a small lamp'", [], 1),
    (("put a small lamp below the table", "en", OBJ, None),
     "region (below the table, small): x 0.44-0.56 y 0.50-0.62; instruction: 'put a small lamp'", [], 1),
    (("put a small lamp to the right of the sofa", "en", OBJ, None),
     "region (to the right of the sofa, small): x 0.60-0.72 y 0.34-0.46; instruction: 'put a small lamp'", [], 1),
    (("put a big lamp to the left of the sofa", "en", OBJ, None),
     "region (to the left of the sofa, big): x 0.10-0.40 y 0.25-0.55; instruction: 'put a big lamp'", [], 1),
    (("add a small bird in the top left corner", "en", None, None),
     "region (top left corner, small): x 0.00-0.20 y 0.00-0.20; instruction: 'add a small bird'", [], 1),
    # absolute places are intersected, with each other and with relative ones
    (("add a bird at the top on the left", "en", None, None),
     "region (top, left): x 0.00-0.50 y 0.00-0.50; instruction: 'add a bird'", [], 2),
    (("add a bird at the top, on the left, in the left third", "en", None, None),
     "region (top, left, left third): x 0.00-0.33 y 0.00-0.50; instruction: 'add a bird'", [], 3),
    (("add a bird on the left, on the right", "en", None, None),
     "region (left, right): empty; instruction: 'add a bird'", ["the places named do not overlap: empty region"], 2),
    (("On the left, put a lamp above the table", "en", OBJ, None),
     "region (left, above the table): x 0.40-0.50 y 0.10-0.30; instruction: 'put a lamp'", [], 2),
    (("put a lamp above the table, on the left", "en", OBJ, None),
     "region (above the table, left): x 0.40-0.50 y 0.10-0.30; instruction: 'put a lamp'", [], 2),
    (("at the top on the left, put a lamp next to the sofa", "en", OBJ, None),
     "region (top, left, next to the sofa): x 0.20-0.40 y 0.30-0.50; instruction: 'put a lamp'", [], 3),
    (("on the right, put a lamp to the left of the sofa", "en", OBJ, None),
     "region (right, to the left of the sofa): empty; instruction: 'put a lamp'",
     ["there is no room there inside the image (the object touches that border): empty region"], 2),
    (("put a lamp above the table", "en", (0.4, 0.0, 0.6, 0.2), None),
     "region (above the table): empty; instruction: 'put a lamp'",
     ["there is no room there inside the image (the object touches that border): empty region"], 1),
    (("make the sky blue", "en", None, None),
     "no spatial phrase understood: the instruction passes through unchanged, empty region", [], 0),
    # moves
    (("move it left", "en", None, None),
     "move (left): offset x -25.0% y +0.0% of the image; instruction: 'it'",
     ["no amount given: moved by 25% of the image"], 1),
    (("move the lamp left and push the chair", "en", None, None),
     "move (left): offset x -25.0% y +0.0% of the image; instruction: 'lamp and push the chair'",
     ["no amount given: moved by 25% of the image"], 1),
    (("move the cup to the right by 10%", "en", OBJ, None),
     "move (10 %, to the right): offset x +10.0% y +0.0% of the image; instruction: 'cup'", [], 1),
    (("move it 2,5% to the right", "en", None, None),
     "move (2,5 %, to the right): offset x +2.5% y +0.0% of the image; instruction: ''", [], 1),
    (("move it slightly down", "en", None, None),
     "move (slightly, down): offset x +0.0% y +10.0% of the image; instruction: 'it'", [], 1),
    (("move it a little bit up", "en", None, None),
     "move (a little bit, up): offset x +0.0% y -10.0% of the image; instruction: 'it'", [], 1),
    (("move it up and to the left by 5 per cent", "en", None, None),
     "move (5 per cent, up, to the left): offset x -5.0% y -5.0% of the image; instruction: 'it'", [], 1),
    (("10 px to the right, move the logo", "en", None, (200, 100)),
     "move (10 px, to the right): offset x +5.0% y +0.0% of the image; instruction: 'logo'", [], 1),
    (("move it 30 pixels to the right", "en", None, (300, 100)),
     "move (30 pixels, to the right): offset x +10.0% y +0.0% of the image; instruction: ''", [], 1),
    (("move it to the top", "en", OBJ, None),
     "move (top): offset x +0.0% y -30.0% of the image; instruction: 'it'", [], 1),
    (("move the lamp to the bottom right corner of the image", "en", OBJ, None),
     "move (bottom right corner): offset x +40.0% y +50.0% of the image; instruction: 'lamp'", [], 1),
    (("move the lamp right by 2 percent", "en", OBJ, None),
     "move (2 percent, right): offset x +2.0% y +0.0% of the image; instruction: 'lamp'", [], 1),
    # Vietnamese
    (("đặt cái đèn bên trái cái ghế", "vi", OBJ, None),
     "region (bên trái cái ghế): x 0.20-0.40 y 0.30-0.50; instruction: 'đặt cái đèn'", [], 1),
    (("dịch nó lên một chút", "vi", None, None),
     "move (một chút, lên): offset x +0.0% y -10.0% of the image; instruction: 'nó'", [], 1),
]


@pytest.mark.parametrize("args, shown, notes, relations", SHOWN, ids=[c[0][0][:40] for c in SHOWN])
def test_what_the_node_shows_for_an_instruction(args, shown, notes, relations):
    text, lang, obj, size = args
    for language in (lang, "auto"):
        p = S.parse(text, language, object_box=obj, image_size=size)
        assert p.describe() == shown
        assert p.notes == notes and p.relations == relations and p.language == lang


def test_a_named_language_is_used_as_given():
    """A Vietnamese instruction parsed as English finds no English place (no detection)."""
    p = S.parse("thêm một cái cây ở góc dưới bên phải", "en")
    assert (p.kind, p.language, p.text) == ("none", "en", "thêm một cái cây ở góc dưới bên phải")
    assert S.parse("thêm một cái cây ở góc dưới bên phải").language == "vi"
    # detection counts the words each table covers, wherever they are: four Vietnamese ones beat
    # one English word at the end
    assert S.detect_language("ở góc dưới bên phải thêm một cái cây, left") == "vi"


def test_messages_on_instructions_that_cannot_be_used():
    with pytest.raises(S.SpatialError) as e:
        S.parse("  ")
    assert str(e.value) == ("the instruction is empty; write what to change (e.g. 'add a tree in the bottom right "
                            "corner')")
    with pytest.raises(S.SpatialError) as e:
        S.parse("move it 30 pixels to the right")
    assert str(e.value) == "a move in pixels needs the image size; connect 'image' (or give the move in %)"
    with pytest.raises(S.MissingObjectMask) as e:
        S.parse("put a lamp next to the sofa")
    assert str(e.value) == ("'next to the sofa' is a place relative to an object (the sofa); connect that object's "
                            "mask to 'object_mask'")


@pytest.fixture()
def tables(tmp_path, monkeypatch):
    """A copy of the shipped tables in a temporary data folder (the parser reads whatever is there)."""
    for p in S.DATA_DIR.glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    monkeypatch.setattr(S, "DATA_DIR", tmp_path)
    S.load_table.cache_clear()
    yield tmp_path
    S.load_table.cache_clear()


def test_english_wins_a_tie_and_codes_may_hold_underscores(tables):
    """A table sorting before English that covers an instruction as well as English does loses the
    tie; a language code with an underscore ('pt_br') is the whole code after 'spatial_'."""
    en = json.loads((tables / "spatial_en.json").read_text())
    (tables / "spatial_aa.json").write_text(json.dumps({**en, "language": "aa"}))
    (tables / "spatial_pt_br.json").write_text(json.dumps({**en, "language": "pt_br"}))
    assert S.available_languages() == ["aa", "en", "pt_br", "vi"]
    assert S.detect_language("add a tree in the bottom right corner") == "en"
    assert S.parse("add a tree in the bottom right corner", "pt_br").language == "pt_br"


def test_the_longest_unit_is_read(tables):
    """With units 'per' and 'per cent' in a table, '5 per cent' is read as percent."""
    en = json.loads((tables / "spatial_en.json").read_text())
    en["amount_units"] = {**en["amount_units"], "per": "pixels"}
    (tables / "spatial_en.json").write_text(json.dumps(en))
    p = S.parse("move it 5 per cent to the right", "en")
    assert p.offset == pytest.approx((0.05, 0.0)) and p.phrases[0] == "5 per cent"


# ------------------------------------------------------------------ kernels/places.py geometry

from precise_edit.kernels import places as P  # noqa: E402


def test_relative_places_are_clipped_to_the_image_and_dropped_when_empty():
    right = (0.7, 0.3, 0.9, 0.5)  # a right_of place would reach x 1.1
    assert P.relation_boxes("right_of", right) == [pytest.approx((0.9, 0.3, 1.0, 0.5))]
    low = (0.4, 0.7, 0.6, 0.9)
    assert P.relation_boxes("below", low) == [pytest.approx((0.4, 0.9, 0.6, 1.0))]
    at_left = (0.0, 0.3, 0.2, 0.5)  # touches the left border: nothing left of it
    assert P.relation_boxes("next_to", at_left) == [pytest.approx((0.2, 0.3, 0.4, 0.5))]
    assert P.relation_boxes("above", (0.4, 0.0, 0.6, 0.2)) == []


@pytest.mark.parametrize("box, factor, want", [
    ((0.0, 0.0, 0.5, 1.0), 0.5, (0.0, 0.25, 0.25, 0.75)),    # touches the left border: scaled towards it
    ((0.5, 0.0, 1.0, 0.5), 0.5, (0.75, 0.0, 1.0, 0.25)),     # top right: towards that corner
    ((0.0, 0.0, 1.0, 0.5), 0.5, (0.25, 0.0, 0.75, 0.25)),    # full width: centred across, towards the top
    ((0.0, 0.5, 1.0, 1.0), 0.5, (0.25, 0.75, 0.75, 1.0)),    # towards the bottom
    ((0.2, 0.4, 0.6, 0.8), 0.5, (0.3, 0.5, 0.5, 0.7)),       # touches nothing: around its centre
    ((0.2, 0.4, 0.6, 0.8), 2.0, (0.0, 0.2, 0.8, 1.0)),       # grown past the border: clipped
])
def test_sizes_scale_a_place_around_the_border_it_touches(box, factor, want):
    assert P.scale_box(box, factor) == pytest.approx(want)


def test_move_targets_put_the_object_against_the_borders_the_place_touches():
    obj = (0.1, 0.3, 0.3, 0.5)  # off-centre: a full-width target must not centre it across
    assert P.target_offset(obj, P.REGIONS["top_half"]) == pytest.approx((0.0, -0.3))
    assert P.target_offset(obj, P.REGIONS["right_third"]) == pytest.approx((0.7, 0.0))
    assert P.target_offset(obj, P.REGIONS["center"]) == pytest.approx((0.3, 0.1))


def test_move_offsets_at_the_border():
    obj = (0.4, 0.3, 0.6, 0.5)
    for off in ((0.6, 0.0), (-0.6, 0.0), (0.0, -0.5), (0.0, 0.7)):  # exactly touching from outside
        with pytest.raises(P.SpatialError, match="entirely outside"):
            P.clip_offset(obj, off)
    with pytest.raises(P.SpatialError) as e:
        P.clip_offset(obj, (0.25, 0.75))
    assert str(e.value) == ("the move (x +25.0%, y +75.0%) puts the object entirely outside the image; "
                            "use a smaller move")
    assert P.clip_offset(obj, (0.0, 0.1)) == ((0.0, 0.1), "")  # inside: unchanged, no notice
    assert P.clip_offset(obj, (-0.1, 0.0)) == ((-0.1, 0.0), "")
    (cx, cy), note = P.clip_offset(obj, (0.5, -0.4))
    assert (cx, cy) == pytest.approx((0.4, -0.3))
    assert note == ("the move (x +50.0%, y -40.0%) would push the object out of the image; clipped to "
                    "x +40.0%, y -30.0% (it stops at the border)")


def test_object_box_of_a_mask():
    m = torch.zeros(2, 1, 10, 20)
    m[0, 0, 2:5, 3:8] = 0.9
    m[1, 0, 6:7, 10:12] = 1.0
    m[1, 0, 0, 0] = 0.5  # at the threshold: off
    assert P.box_of_mask(m) == pytest.approx((3 / 20, 2 / 10, 12 / 20, 7 / 10))  # union over the batch
    assert P.box_of_mask(m[0, 0]) == pytest.approx((3 / 20, 2 / 10, 8 / 20, 5 / 10))
    assert P.box_of_mask(m[1, 0], threshold=0.4) == pytest.approx((0.0, 0.0, 12 / 20, 7 / 10))
    assert P.box_of_mask(torch.zeros(4, 4)) is None


def test_region_mask_takes_pixel_centres_on_the_near_edge_only():
    # 4 x 4 pixel centres at 0.125, 0.375, 0.625, 0.875: a box from 0.125 to 0.625 holds two
    m = P.boxes_mask([(0.125, 0.375, 0.625, 0.875)], 4, 4)
    want = torch.zeros(4, 4)
    want[1:3, 0:2] = 1.0
    assert torch.equal(m, want)
    halves = P.boxes_mask([(0.0, 0.0, 0.5, 1.0)], 4, 4) + P.boxes_mask([(0.5, 0.0, 1.0, 1.0)], 4, 4)
    assert torch.equal(halves, torch.ones(4, 4))  # adjacent places tile without overlap


def test_iou_of_masks():
    a, b = torch.zeros(4, 4), torch.zeros(4, 4)
    assert P.iou(a, b) == 1.0  # both empty: the same place
    a[0, :] = 1.0
    b[0, :2] = 1.0
    b[1, :2] = 0.5  # not inside
    assert P.iou(a, b) == 0.5
    assert P.iou(b, a) == 0.5
    a[0, :] = 0.5
    assert P.iou(a, b) == 0.0


# ------------------------------------------------------------------- kernels/detail.py measure

from precise_edit.kernels import detail as D  # noqa: E402


@pytest.mark.parametrize("text, want", [
    ("", (0, 0, 0)), ("   ", (0, 0, 0)), (None, (0, 0, 0)),
    ("add a dog", (1, 0, 0)),
    ("make the wooden table shiny and add two cats", (2, 2, 0)),
    # units, amount words, directions and prepositions are not objects; a move is one relation
    ("move the red cup 20 pixels to the left slightly", (1, 1, 1)),
    ("move it up by 5 percent", (0, 0, 1)),
    ("move it 90% to the right", (0, 0, 1)),  # a move the parser refuses still counts as a relation
    ("add a bird on the left side of the picture", (1, 0, 1)),  # image words are not objects
    ("put a cat in the bottom right corner", (1, 0, 1)),
    ("add a bird above the house", (2, 0, 1)),
    ("put a cat below the table and a dog left of the sofa", (4, 0, 2)),
])
def test_detail_counts(text, want):
    d = D.detail(text)
    assert (d.objects, d.attributes, d.relations) == want and d.count == sum(want)


def test_detail_uses_the_language_given_and_saturates():
    assert D.detail("add a brown dog") == D.Detail(1, 1, 0)
    assert D.detail("add a brown dog", "vi") == D.Detail(4, 0, 0)  # no English words in the Vietnamese table
    assert D.detail_strength(D.Detail(3, 2, 1)) == 6 / 8
    assert D.detail_strength(D.Detail(3, 2, 1), saturation=1) == 1.0
    with pytest.raises(S.SpatialError) as e:
        D.detail_strength(D.Detail(1, 0, 0), saturation=0)
    assert str(e.value) == "saturation must be >= 1"


def test_detail_with_the_language_given_and_a_table_without_detail_words(tables):
    # the spatial parse uses the language given too: an English place is no place in Vietnamese
    assert D.detail("add a tree in the bottom right corner", "vi").relations == 0
    assert D.detail("add a tree in the bottom right corner", "en").relations == 1
    en = json.loads((tables / "spatial_en.json").read_text())
    del en["detail"]
    (tables / "spatial_xx.json").write_text(json.dumps({**en, "language": "xx"}))
    # no detail words: every content word outside the spatial phrases counts as an object
    assert D.detail("add a brown dog in the bottom right corner", "xx") == D.Detail(4, 0, 1)


def test_the_longest_image_words_are_read(tables):
    """With freshly loaded tables (load_table is cached per process): 'of the image frame' is taken
    whole after a place, not 'of the image' leaving 'frame' in the instruction."""
    p = S.parse("add a bird in the top left corner of the image frame", "en")
    assert p.text == "add a bird" and p.boxes == [S.REGIONS["corner_tl"]]

"""Rating page storage, validation and study creation (no server): server/store.py, server/studies.py."""
from __future__ import annotations

import csv
import io
import json
import sqlite3

import numpy as np
import pytest
from PIL import Image

from precise_edit.server.store import Duplicate, Invalid, NewItem, NotFound, RatingStore
from precise_edit.server import studies


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def make_items(n=3, k=2):
    return [NewItem(f"make it {i}", png((i, 0, 0)), [(f"m{j}", png((i, j, 1))) for j in range(k)], case_id=str(i))
            for i in range(n)]


@pytest.fixture
def store(tmp_path):
    return RatingStore(tmp_path / "rating", busy_timeout=0.2)


@pytest.fixture
def study(store):
    made = store.create_study("s", make_items())
    return made, store.join(made["study"], made["rater_key"], "ann")


def answer_for(item, better="first", i=4, p=3):
    scores = {str(e["id"]): [i, p] for e in item["edits"]}
    b = {"first": item["edits"][0]["id"], "tie": None}[better]
    return scores, b


def test_study_owns_copies_and_serves_by_id_only(store, study):
    made, tok = study
    view = store.rater_view(tok)
    img = view["items"][0]["source"]
    path = store.image_path(img, tok)
    assert path.parent == store.root / made["study"] and path.read_bytes().startswith(b"\x89PNG")
    assert store.image_path(img, made["owner_token"]) == path
    for bad in ("../rating.sqlite", img[:-1] + "/", "0" * 24, img.upper()):
        with pytest.raises(NotFound):
            store.image_path(bad, tok)
    other = store.create_study("t", make_items(1))
    with pytest.raises(NotFound):   # a rater of one study never sees another study's pictures
        store.image_path(img, store.join(other["study"], other["rater_key"], "bob"))


def test_a_study_compares_different_methods(store):
    with pytest.raises(Invalid, match="twice"):
        store.create_study("dup", [NewItem("x", png("red"), [("m", png("green")), ("m", png("blue"))])])
    with pytest.raises(Invalid, match="two or more"):
        store.create_study("one", [NewItem("x", png("red"), [("m", png("green"))])])


def test_join_needs_the_rater_key(store, study):
    made, _ = study
    with pytest.raises(NotFound):
        store.join(made["study"], "wrong", "eve")
    with pytest.raises(NotFound):
        store.join("ffffffffffff", made["rater_key"], "eve")
    with pytest.raises(Invalid):
        store.join(made["study"], made["rater_key"], "x" * 65)
    with pytest.raises(Duplicate, match="taken"):     # nobody takes over ann's answers by typing her name
        store.join(made["study"], made["rater_key"], "ann")


def test_order_is_random_per_rater_and_stable(store, study):
    made, tok = study
    store.create_study("more", make_items(12, 3))
    big = store.create_study("big", make_items(12, 3))
    a = store.join(big["study"], big["rater_key"], "a")
    b = store.join(big["study"], big["rater_key"], "b")
    order = lambda t: [(it["id"], tuple(e["id"] for e in it["edits"])) for it in store.rater_view(t)["items"]]
    assert order(a) == order(a)
    assert order(a) != order(b)
    assert sorted((i, tuple(sorted(e))) for i, e in order(a)) == sorted((i, tuple(sorted(e))) for i, e in order(b))
    assert [e for _, e in order(a)] != [tuple(sorted(e)) for _, e in order(a)]   # edits shuffled too
    v = store.rater_view(a)
    assert all("method" not in e for it in v["items"] for e in it["edits"])   # blind
    assert [e["label"] for e in v["items"][0]["edits"]] == ["A", "B", "C"]


def test_answer_validation(store, study):
    made, tok = study
    item = store.rater_view(tok)["items"][0]
    scores, better = answer_for(item)
    bad_cases = [
        ({**scores, str(item["edits"][0]["id"]): [0, 3]}, better),       # out of range
        ({**scores, str(item["edits"][0]["id"]): [6, 3]}, better),
        ({**scores, str(item["edits"][0]["id"]): [True, 3]}, better),    # a bool is not a score
        ({**scores, str(item["edits"][0]["id"]): [3.5, 3]}, better),
        ({str(item["edits"][0]["id"]): [3, 3]}, better),                 # an edit left unscored
        ({**scores, "999999": [3, 3]}, better),                          # an edit of no item
        (scores, 999999),                                                # better: not this item's edit
        ("nope", better),
    ]
    for s, b in bad_cases:
        with pytest.raises(Invalid):
            store.save_answer(tok, item["id"], s, b)
    with pytest.raises(Invalid):
        store.save_answer(tok, str(item["id"]), scores, better)
    assert store.save_answer(tok, item["id"], scores, better, "c1")["done"] == 1
    with pytest.raises(Duplicate):
        store.save_answer(tok, item["id"], scores, better, "c2")
    assert store.save_answer(tok, item["id"], scores, better, "c1")["resent"]   # a resend is not a duplicate
    assert len(store.answer_rows(made["study"])) == 2


def test_another_studys_item_is_refused(store, study):
    made, tok = study
    other = store.create_study("t", make_items(1))
    foreign = store.rater_view(store.join(other["study"], other["rater_key"], "bob"))["items"][0]
    scores, better = answer_for(foreign)
    with pytest.raises(NotFound):
        store.save_answer(tok, foreign["id"], scores, better)
    with pytest.raises(NotFound):
        store.save_answer("not-a-token", foreign["id"], scores, better)
    assert store.answer_rows(other["study"]) == []


def test_undo_removes_the_last_answer_only(store, study):
    made, tok = study
    items = store.rater_view(tok)["items"]
    for it in items[:2]:
        store.save_answer(tok, it["id"], *answer_for(it))
    assert store.undo_last(tok) == items[1]["id"]
    v = store.rater_view(tok)
    assert v["done"] == 1 and v["items"][0]["answer"] and not v["items"][1]["answer"]
    assert store.undo_last(tok) == items[0]["id"] and store.undo_last(tok) is None


def test_owner_token(store, study):
    made, _ = study
    assert store.check_owner(made["study"], made["owner_token"])["rater_key"] == made["rater_key"]
    for sid, tok in ((made["study"], "x"), (made["study"], ""), ("nosuch", made["owner_token"])):
        with pytest.raises(NotFound):
            store.check_owner(sid, tok)


def test_a_locked_database_raises_and_keeps_nothing_half_written(store, study):
    made, tok = study
    item = store.rater_view(tok)["items"][0]
    hold = sqlite3.connect(store.db_path, isolation_level=None)
    hold.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError):
            store.save_answer(tok, item["id"], *answer_for(item))
    finally:
        hold.execute("ROLLBACK")
        hold.close()
    assert store.save_answer(tok, item["id"], *answer_for(item))["done"] == 1


def test_items_from_csv_and_bad_csv(tmp_path):
    for name, color in (("src.png", "red"), ("a.png", "green"), ("b.png", "blue")):
        Image.new("RGB", (8, 8), color).save(tmp_path / name)
    f = tmp_path / "pairs.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "instruction", "method", "edited"])
        w.writerow(["src.png", "make it green", "ma", "a.png"])
        w.writerow(["src.png", "make it green", "mb", "b.png"])
    items = studies.items_from_csv(f)
    assert len(items) == 1 and [m for m, _ in items[0].edits] == ["ma", "mb"]
    assert np.asarray(Image.open(io.BytesIO(items[0].edits[1][1])))[0, 0].tolist() == [0, 0, 255]
    f.write_text("source,method\nsrc.png,ma\n")
    with pytest.raises(Invalid, match="instruction"):
        studies.items_from_csv(f)


def test_items_from_a_runner_folder(tmp_path):
    data = tmp_path / "data"
    (data / "annotation_images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(data / "annotation_images" / "c1.png")
    Image.new("RGB", (8, 8), "red").save(data / "annotation_images" / "c2.png")
    mapping = {c: {"image_path": f"{c}.png", "original_prompt": "a", "editing_prompt": "b [x]", "mask": [],
                   "editing_instruction": f"do {c}", "editing_type_id": "1"} for c in ("c1", "c2")}
    (data / "mapping_file.json").write_text(json.dumps(mapping))
    run = tmp_path / "run"
    methods = {"kv": {"dir": "kv__1"}, "spot": {"dir": "spot__2"}}
    (run).mkdir()
    (run / "run.json").write_text(json.dumps({"mapping_file": str(data / "mapping_file.json"),
                                              "images_dir": str(data / "annotation_images"), "methods": methods}))
    for m in methods.values():
        for c in ("c1", "c2"):
            d = run / "cases" / m["dir"] / c
            d.mkdir(parents=True)
            Image.new("RGB", (8, 8), "blue").save(d / "edited.png")
            status = "failed" if (c == "c2" and m["dir"] == "spot__2") else "ok"
            (d / "record.json").write_text(json.dumps({"status": status}))
    items = studies.items_from_run(run)
    assert [it.case_id for it in items] == ["c1"]          # c2 has only one successful edit
    assert items[0].instruction == "do c1" and [m for m, _ in items[0].edits] == ["kv", "spot"]
    with pytest.raises(Invalid, match="not in the run"):
        studies.items_from_run(run, methods=["nope"])


def test_items_from_arrays_checks_batches():
    src = np.zeros((1, 8, 8, 3), np.float32)
    a, b = np.ones((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 3), np.float32)
    items = studies.items_from_arrays(src, [a, b], ["x", "y"], ["one for all"])
    assert len(items) == 2 and items[1].instruction == "one for all"
    for args in (([a, b[:1]], ["x", "y"], ["i"]), ([a, b], ["x", "x"], ["i"]), ([a, b], ["x", "y"], ["i", "j", "k"]),
                 ([a], ["x"], ["i"])):
        with pytest.raises(Invalid):
            studies.items_from_arrays(src, *args)


def test_cli_makes_a_study_from_a_csv(tmp_path, capsys):
    from precise_edit.server.cli import main

    for name, color in (("src.png", "red"), ("a.png", "green"), ("b.png", "blue")):
        Image.new("RGB", (8, 8), color).save(tmp_path / name)
    (tmp_path / "pairs.csv").write_text("source,instruction,method,edited\nsrc.png,go,ma,a.png\nsrc.png,go,mb,b.png\n")
    assert main(["--csv", str(tmp_path / "pairs.csv"), "--user-dir", str(tmp_path / "user")]) == 0
    out = capsys.readouterr().out
    st = RatingStore(tmp_path / "user" / "precise_edit" / "rating")
    [study] = st.list_studies()
    assert study["items"] == 1 and f"/rate/{study['id']}#key=" in out
    owner = out.split("#owner=")[1].split()[0]
    assert st.check_owner(study["id"], owner)["name"] == "pairs.csv"
    (tmp_path / "bad.csv").write_text("source,instruction\n")
    assert main(["--csv", str(tmp_path / "bad.csv"), "--user-dir", str(tmp_path / "user")]) == 2

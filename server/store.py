"""SQLite storage of rating studies: studies, items, edits, the study's own image files, raters, answers.

One database file (``<user dir>/precise_edit/rating/rating.sqlite``) and, beside it, one folder per
study holding copies of its pictures named ``<image id>.png``. Images are looked up by id only: the
id is checked against ``[0-9a-f]{24}`` and the database before a file name is formed from it, so no
text from a request ever becomes a path.

Tokens (owner, rater) are stored as SHA-256 hashes; the owner token is shown once, at creation.
Each thread keeps its own connection (autocommit; writes in explicit ``BEGIN IMMEDIATE`` transactions),
so the store is safe from ComfyUI's worker thread and the server's event loop alike; writes wait at most ``busy_timeout`` seconds for a lock and then raise
:class:`sqlite3.OperationalError` (the routes turn that into "not saved").
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCORE_MIN, SCORE_MAX = 1, 5
SQLITE_INT_MAX = 2 ** 63 - 1   # larger ids cannot be stored or looked up (sqlite3 raises OverflowError)
ID_RE = re.compile(r"^[0-9a-f]{24}$")
STUDY_RE = re.compile(r"^[0-9a-f]{12}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (id TEXT PRIMARY KEY, name TEXT NOT NULL, owner_hash TEXT NOT NULL,
    rater_key TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id));
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id),
    position INTEGER NOT NULL, instruction TEXT NOT NULL, source_image TEXT NOT NULL REFERENCES images(id),
    case_id TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS edits (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items(id),
    method TEXT NOT NULL, image TEXT NOT NULL REFERENCES images(id));
CREATE TABLE IF NOT EXISTS raters (id INTEGER PRIMARY KEY, study_id TEXT NOT NULL REFERENCES studies(id),
    name TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, created REAL NOT NULL, UNIQUE(study_id, name));
CREATE TABLE IF NOT EXISTS answers (id INTEGER PRIMARY KEY, study_id TEXT NOT NULL, item_id INTEGER NOT NULL
    REFERENCES items(id), rater_id INTEGER NOT NULL REFERENCES raters(id), better_edit INTEGER, client_id TEXT,
    created REAL NOT NULL, UNIQUE(rater_id, item_id), UNIQUE(rater_id, client_id));
CREATE TABLE IF NOT EXISTS scores (answer_id INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE,
    edit_id INTEGER NOT NULL REFERENCES edits(id), instruction INTEGER NOT NULL, preserve INTEGER NOT NULL,
    PRIMARY KEY(answer_id, edit_id));
CREATE INDEX IF NOT EXISTS items_study ON items(study_id, position);
CREATE INDEX IF NOT EXISTS edits_item ON edits(item_id);
CREATE INDEX IF NOT EXISTS answers_study ON answers(study_id);
"""


class NotFound(Exception):
    """Unknown study, item, image or token: answered 404 without details."""


class Invalid(ValueError):
    """A request that can never be saved (out of range, wrong item, malformed): answered 400."""


class Duplicate(Exception):
    """This rater already answered this item, or a rater name is taken: answered 409."""

    def __init__(self, message: str = "this item is already answered (undo it first to change it)"):
        super().__init__(message)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class NewItem:
    instruction: str
    source_png: bytes
    edits: list[tuple[str, bytes]]     # (method, png)
    case_id: str = ""


class RatingStore:
    def __init__(self, root: str | os.PathLike, busy_timeout: float = 2.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "rating.sqlite"
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        with self._conn() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(SCHEMA)

    @contextmanager
    def _conn(self):
        """This thread's connection (kept open: opening one per request costs more than the query)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.db_path, timeout=self.busy_timeout, isolation_level=None,
                                check_same_thread=True)
            c.execute("PRAGMA foreign_keys=ON")
            self._local.conn = c
        yield c

    @contextmanager
    def _tx(self):
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    # ---- studies ------------------------------------------------------------------------------
    def create_study(self, name: str, items: list[NewItem]) -> dict:
        """A study owning copies of its pictures. Returns its id, owner token (shown once), rater key."""
        if not items:
            raise Invalid("a study needs at least one item")
        for it in items:
            if len(it.edits) < 2:
                raise Invalid(f"item {it.case_id or it.instruction!r} has {len(it.edits)} edit(s); "
                              "a study compares two or more")
            methods = [m for m, _ in it.edits]
            if len(set(methods)) != len(methods):
                raise Invalid(f"item {it.case_id or it.instruction!r} shows method(s) twice: {', '.join(methods)}")
        sid, owner, rater_key = secrets.token_hex(6), secrets.token_hex(16), secrets.token_hex(8)
        folder = self.root / sid
        folder.mkdir()
        with self._tx() as c:
            c.execute("INSERT INTO studies VALUES (?,?,?,?,?)", (sid, name.strip() or sid, _hash(owner), rater_key,
                                                                  time.time()))
            for pos, it in enumerate(items):
                src = self._add_image(c, sid, folder, it.source_png)
                item_id = c.execute("INSERT INTO items (study_id, position, instruction, source_image, case_id) "
                                    "VALUES (?,?,?,?,?)", (sid, pos, it.instruction, src, it.case_id)).lastrowid
                for method, png in it.edits:
                    c.execute("INSERT INTO edits (item_id, method, image) VALUES (?,?,?)",
                              (item_id, method, self._add_image(c, sid, folder, png)))
        return {"study": sid, "owner_token": owner, "rater_key": rater_key}

    def _add_image(self, c, sid: str, folder: Path, png: bytes) -> str:
        if not png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise Invalid("study pictures must be PNG files")
        image_id = secrets.token_hex(12)
        (folder / f"{image_id}.png").write_bytes(png)
        c.execute("INSERT INTO images VALUES (?,?)", (image_id, sid))
        return image_id

    def list_studies(self) -> list[dict]:
        with self._conn() as c:
            rows = c.execute("SELECT s.id, s.name, s.created, (SELECT COUNT(*) FROM items i WHERE i.study_id=s.id), "
                             "(SELECT COUNT(*) FROM answers a WHERE a.study_id=s.id) FROM studies s "
                             "ORDER BY s.created DESC").fetchall()
        return [{"id": r[0], "name": r[1], "created": r[2], "items": r[3], "answers": r[4]} for r in rows]

    def check_owner(self, sid: str, token: str) -> dict:
        if not STUDY_RE.match(sid or "") or not token:
            raise NotFound
        with self._conn() as c:
            row = c.execute("SELECT name, owner_hash, rater_key FROM studies WHERE id=?", (sid,)).fetchone()
        if row is None or not secrets.compare_digest(row[1], _hash(token)):
            raise NotFound
        return {"id": sid, "name": row[0], "rater_key": row[2]}

    # ---- raters -------------------------------------------------------------------------------
    def join(self, sid: str, rater_key: str, name: str) -> str:
        """A rater token for ``name`` in study ``sid`` (the study's rater key is needed). A name already
        taken in the study is refused: nobody can take over another rater's answers by typing their name."""
        if not STUDY_RE.match(sid or ""):
            raise NotFound
        if name is not None and not isinstance(name, str):
            raise Invalid("name: a text of 1 to 64 characters")
        name = (name or "").strip()
        if not 1 <= len(name) <= 64:
            raise Invalid("name: 1 to 64 characters")
        token = secrets.token_hex(16)
        with self._tx() as c:
            row = c.execute("SELECT rater_key FROM studies WHERE id=?", (sid,)).fetchone()
            if row is None or not secrets.compare_digest(row[0], str(rater_key or "")):
                raise NotFound
            if c.execute("SELECT 1 FROM raters WHERE study_id=? AND name=?", (sid, name)).fetchone():
                raise Duplicate(f"the name {name!r} is taken in this study: pick another one")
            c.execute("INSERT INTO raters (study_id, name, token_hash, created) VALUES (?,?,?,?)",
                      (sid, name, _hash(token), time.time()))
        return token

    def rater(self, token: str) -> tuple[int, str, str]:
        """(rater id, study id, name) of a rater token; NotFound otherwise."""
        if not token or len(token) > 64:
            raise NotFound
        with self._conn() as c:
            row = c.execute("SELECT id, study_id, name FROM raters WHERE token_hash=?", (_hash(token),)).fetchone()
        if row is None:
            raise NotFound
        return row

    # ---- what a rater sees --------------------------------------------------------------------
    def rater_view(self, token: str) -> dict:
        """The rater's items in the rater's own random order (seeded by study and rater), each with its
        edits in a random order, labelled A, B, ...; no method names. Answered items carry the answer."""
        rid, sid, name = self.rater(token)
        with self._conn() as c:
            study = c.execute("SELECT name FROM studies WHERE id=?", (sid,)).fetchone()[0]
            items = c.execute("SELECT id, instruction, source_image FROM items WHERE study_id=? ORDER BY position",
                              (sid,)).fetchall()
            edits = c.execute("SELECT e.id, e.item_id, e.image FROM edits e JOIN items i ON i.id=e.item_id "
                              "WHERE i.study_id=? ORDER BY e.id", (sid,)).fetchall()
            answers = c.execute("SELECT id, item_id, better_edit, created FROM answers WHERE rater_id=?",
                                (rid,)).fetchall()
            scores = c.execute("SELECT s.answer_id, s.edit_id, s.instruction, s.preserve FROM scores s "
                               "JOIN answers a ON a.id=s.answer_id WHERE a.rater_id=?", (rid,)).fetchall()
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{sid}/{rid}".encode()).digest()[:8], "little"))
        by_item: dict[int, list] = {}
        for e in edits:
            by_item.setdefault(e[1], []).append({"id": e[0], "image": e[2]})
        per_answer: dict[int, dict] = {}
        for a_id, e_id, ins, pre in scores:
            per_answer.setdefault(a_id, {})[str(e_id)] = [ins, pre]
        answered = {a[1]: {"better": a[2], "scores": per_answer.get(a[0], {}), "created": a[3]} for a in answers}
        out = []
        for k in rng.permutation(len(items)):
            item_id, instruction, src = items[k]
            eds = by_item.get(item_id, [])
            eds = [eds[j] for j in rng.permutation(len(eds))]
            for j, e in enumerate(eds):
                e["label"] = chr(ord("A") + j)
            out.append({"id": item_id, "instruction": instruction, "source": src, "edits": eds,
                        "answer": answered.get(item_id)})
        return {"study": sid, "name": study, "rater": name, "items": out,
                "done": len(answered), "total": len(items)}

    def image_path(self, image_id: str, token: str) -> Path:
        """The file of an image the token's holder may see (a rater of its study or its owner)."""
        if not ID_RE.match(image_id or ""):
            raise NotFound
        with self._conn() as c:
            row = c.execute("SELECT study_id FROM images WHERE id=?", (image_id,)).fetchone()
            if row is None:
                raise NotFound
            sid = row[0]
            ok = c.execute("SELECT 1 FROM raters WHERE token_hash=? AND study_id=?", (_hash(token or ""), sid)).fetchone()
            if ok is None:
                own = c.execute("SELECT owner_hash FROM studies WHERE id=?", (sid,)).fetchone()
                ok = own is not None and secrets.compare_digest(own[0], _hash(token or ""))
        if not ok:
            raise NotFound
        return self.root / sid / f"{image_id}.png"

    # ---- answers ------------------------------------------------------------------------------
    def save_answer(self, token: str, item_id, scores, better, client_id: str | None = None) -> dict:
        """Validate and store one answer: ``scores`` maps every edit id of the item to
        ``[instruction followed, rest kept]`` (integers 1-5); ``better`` is one of the item's edit ids
        or ``None`` for a tie. A resend with the same ``client_id`` is answered as saved."""
        rid, sid, _ = self.rater(token)
        if isinstance(item_id, bool) or not isinstance(item_id, int) or not 0 <= item_id <= SQLITE_INT_MAX:
            raise Invalid("item: an integer id")
        if client_id is not None and (not isinstance(client_id, str) or not 1 <= len(client_id) <= 64):
            raise Invalid("client_id: a string of 1 to 64 characters")
        if not isinstance(scores, dict):
            raise Invalid("scores: an object mapping each edit id to [instruction, rest kept]")
        with self._tx() as c:
            sent = c.execute("SELECT item_id FROM answers WHERE rater_id=? AND client_id=?",
                             (rid, client_id)).fetchone() if client_id else None
            if sent is not None:
                if sent[0] != item_id:   # a client_id names one answer: never report another item as saved
                    raise Invalid(f"client_id: {client_id!r} was already used for another item; send a new client_id")
                return {"saved": True, "resent": True}
            row = c.execute("SELECT study_id FROM items WHERE id=?", (item_id,)).fetchone()
            if row is None or row[0] != sid:
                raise NotFound   # unknown item, or another study's: refused without details
            edit_ids = {r[0] for r in c.execute("SELECT id FROM edits WHERE item_id=?", (item_id,))}
            parsed = {}
            for key, pair in scores.items():
                try:
                    eid = int(key)
                except (TypeError, ValueError):
                    raise Invalid(f"scores: {key!r} is not an edit id") from None
                if eid not in edit_ids:
                    raise Invalid(f"scores: edit {eid} is not part of item {item_id}")
                if (not isinstance(pair, list) or len(pair) != 2
                        or any(isinstance(v, bool) or not isinstance(v, int) or not SCORE_MIN <= v <= SCORE_MAX
                               for v in pair)):
                    raise Invalid(f"scores: edit {eid} needs [instruction, rest kept], integers {SCORE_MIN}-{SCORE_MAX}")
                parsed[eid] = pair
            if set(parsed) != edit_ids:
                raise Invalid(f"scores: every edit of item {item_id} needs scores")
            if better is not None and (isinstance(better, bool) or better not in edit_ids):
                raise Invalid("better: one of the item's edit ids, or null for a tie")
            if c.execute("SELECT 1 FROM answers WHERE rater_id=? AND item_id=?", (rid, item_id)).fetchone():
                raise Duplicate
            aid = c.execute("INSERT INTO answers (study_id, item_id, rater_id, better_edit, client_id, created) "
                            "VALUES (?,?,?,?,?,?)", (sid, item_id, rid, better, client_id, time.time())).lastrowid
            c.executemany("INSERT INTO scores VALUES (?,?,?,?)",
                          [(aid, eid, p[0], p[1]) for eid, p in parsed.items()])
            done = c.execute("SELECT COUNT(*) FROM answers WHERE rater_id=?", (rid,)).fetchone()[0]
        return {"saved": True, "done": done}

    def undo_last(self, token: str) -> int | None:
        """Delete the rater's most recent answer; returns its item id (None when there was none)."""
        rid, _, _ = self.rater(token)
        with self._tx() as c:
            row = c.execute("SELECT id, item_id FROM answers WHERE rater_id=? ORDER BY created DESC, id DESC LIMIT 1",
                            (rid,)).fetchone()
            if row is None:
                return None
            c.execute("DELETE FROM scores WHERE answer_id=?", (row[0],))
            c.execute("DELETE FROM answers WHERE id=?", (row[0],))
        return row[1]

    # ---- results ------------------------------------------------------------------------------
    def answer_rows(self, sid: str) -> list[dict]:
        """One row per (answer, edit): rater, item, method, both scores, whether it was chosen, time."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT a.id, r.name, a.item_id, i.case_id, e.id, e.method, s.instruction, s.preserve, "
                "a.better_edit, a.created FROM answers a JOIN raters r ON r.id=a.rater_id "
                "JOIN items i ON i.id=a.item_id JOIN scores s ON s.answer_id=a.id JOIN edits e ON e.id=s.edit_id "
                "WHERE a.study_id=? ORDER BY a.id, e.id", (sid,)).fetchall()
        return [{"answer": r[0], "rater": r[1], "item": r[2], "case_id": r[3], "edit": r[4], "method": r[5],
                 "instruction": r[6], "preserve": r[7],
                 "choice": "tie" if r[8] is None else ("better" if r[8] == r[4] else "worse"), "created": r[9]}
                for r in rows]

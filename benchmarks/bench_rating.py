"""Rating page latency on a local ComfyUI with 10,000 stored answers (issue 13: p95 <= 100 ms).

    python benchmarks/bench_rating.py                       # COMFYUI_PATH or .host/ComfyUI, 10,000 answers
    python benchmarks/bench_rating.py --answers 10000 --rounds 40 --repeats 3

Starts the host ComfyUI headless with this pack (tests/harness/comfy_server.py, 127.0.0.1 only), fills
its rating database with a study of ``--items`` items x 2 methods (256^2 PNGs) answered by enough raters
to store ``--answers`` answers, then measures, interleaved, per round:

  page load      the rater page: rate.html, rate.js, rating.css, /api/me (the rater's items in order)
                 and the three pictures of the first item, once one request after the other and once
                 as a browser fetches them (4 round trips: the page, js + css together, the items,
                 the 3 pictures together)
  answer         one POST /api/answers (validated, stored in SQLite) round trip
  undo+answer    POST /api/undo then the answer again (the undo key)
  results        the owner's /api/studies/<id>/results (all answers aggregated: CIs, BT, alpha)
  floor          ComfyUI's own GET /queue: what one request costs on this server and machine

Prints median and p95 per measure for each repeat and the median of the repeats' p95. The machine is
shared and noisy: figures depend on its load (printed).
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))


def png(seed: int, size: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def fill(store, items: int, answers: int, size: int) -> dict:
    """A study with ``items`` items, and ``answers`` answers from as many raters as needed (bulk SQL in one
    transaction: the stored rows are the same as the API writes; filling through HTTP would take minutes)."""
    from precise_edit.server.store import NewItem

    made = store.create_study("bench", [NewItem(f"edit {i}", png(3 * i, size),
                                                 [("kv", png(3 * i + 1, size)), ("spot", png(3 * i + 2, size))])
                                         for i in range(items)])
    con = sqlite3.connect(store.db_path)
    item_edits = {}
    for eid, iid in con.execute("SELECT id, item_id FROM edits"):
        item_edits.setdefault(iid, []).append(eid)
    ids = sorted(item_edits)
    rng = np.random.default_rng(0)
    now = time.time()
    n_raters = -(-answers // items)
    with con:
        for r in range(n_raters):
            store.join(made["study"], made["rater_key"], f"filler{r}")
        raters = [row[0] for row in con.execute("SELECT id FROM raters WHERE name LIKE 'filler%'")]
        a_id = 1 + (con.execute("SELECT MAX(id) FROM answers").fetchone()[0] or 0)
        done = 0
        for rid in raters:
            for iid in ids:
                if done == answers:
                    break
                eds = item_edits[iid]
                better = int(rng.choice(eds + [None]) or 0) or None
                con.execute("INSERT INTO answers VALUES (?,?,?,?,?,?,?)",
                            (a_id, made["study"], iid, rid, better, f"f{a_id}", now))
                con.executemany("INSERT INTO scores VALUES (?,?,?,?)",
                                [(a_id, e, int(rng.integers(1, 6)), int(rng.integers(1, 6))) for e in eds])
                a_id += 1
                done += 1
    con.close()
    return made


def p95(xs):
    return float(np.percentile(xs, 95))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=150)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=40, help="requests per measure and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", str(ROOT / ".host" / "ComfyUI")))
    args = ap.parse_args()

    from pack_import import import_pack

    import_pack()
    sys.path.insert(0, args.comfyui)
    from harness.comfy_server import ComfyServer
    from precise_edit.server.store import RatingStore

    base = Path(tempfile.mkdtemp(prefix="bench_rating_"))
    store = RatingStore(base / "user" / "precise_edit" / "rating")
    t0 = time.perf_counter()
    made = fill(store, args.items, args.answers, args.size)
    n_stored = len(store.answer_rows(made["study"])) // 2
    print(f"filled {n_stored} answers ({args.items} items x 2 methods, {args.size}^2) in "
          f"{time.perf_counter() - t0:.1f} s")
    srv = ComfyServer(Path(args.comfyui), ROOT, ROOT / "tests" / "comfy_test_helpers", base).start()
    try:
        url = srv.url + "/precise_edit/rating"
        s = requests.Session()
        sid = made["study"]
        token = s.post(f"{url}/api/studies/{sid}/join", json={"key": made["rater_key"], "name": "bench"}).json()["token"]
        h = {"X-Rater-Token": token}

        pool = ThreadPoolExecutor(4)
        sessions = [requests.Session() for _ in range(4)]

        def fetch_all(paths, params=None):
            futs = [pool.submit(lambda k, p: sessions[k].get(url + p, params=params, headers=h), k, p)
                    for k, p in enumerate(paths)]
            for f in futs:
                f.result().raise_for_status()

        def page_load(parallel=False):
            s.get(f"{url}/rate/{sid}").raise_for_status()
            assets = [f"/static/{a}" for a in ("rate.js", "rating.css")]
            if parallel:
                fetch_all(assets)
            else:
                for a in assets:
                    s.get(url + a).raise_for_status()
            view = s.get(f"{url}/api/me", headers=h).json()
            it = view["items"][0]
            images = [f"/api/images/{img}" for img in [it["source"]] + [e["image"] for e in it["edits"]]]
            if parallel:
                fetch_all(images, {"t": token})
            else:
                for img in images:
                    s.get(url + img, params={"t": token}).raise_for_status()
            return view

        items = page_load()["items"]
        state = {"k": 0, "last": None}

        def body(it):
            return {"item": it["id"], "scores": {str(e["id"]): [4, 3] for e in it["edits"]},
                    "better": it["edits"][0]["id"], "client_id": f"b{time.perf_counter_ns()}"}

        def answer():
            it = items[state["k"]]            # each round answers a new item (rounds x repeats <= items)
            state["k"] += 1
            r = s.post(f"{url}/api/answers", headers=h, json=body(it))
            assert r.status_code == 200, r.text
            state["last"] = it

        def undo_answer():
            assert s.post(f"{url}/api/undo", headers=h).json()["item"] == state["last"]["id"]
            assert s.post(f"{url}/api/answers", headers=h, json=body(state["last"])).status_code == 200

        def results():
            s.get(f"{url}/api/studies/{sid}/results", headers={"X-Owner-Token": made["owner_token"]}).raise_for_status()

        def floor():
            s.get(srv.url + "/queue").raise_for_status()

        measures = {"ComfyUI's own GET /queue (the floor of one request)": floor,
                    "page load (7 requests one by one)": page_load,
                    "page load (as a browser: html, js+css, items, 3 images)": lambda: page_load(parallel=True), "answer": answer, "undo+answer": undo_answer, "results (owner)": results}
        if args.rounds * args.repeats > len(items):
            raise SystemExit(f"--rounds x --repeats must be <= --items ({len(items)})")
        per = {m: [] for m in measures}
        for rep in range(args.repeats):
            times = {m: [] for m in measures}
            for _ in range(args.rounds):          # interleaved: one of each per round
                for m, fn in measures.items():
                    t = time.perf_counter()
                    fn()
                    times[m].append((time.perf_counter() - t) * 1000)
            for m in measures:
                per[m].append((statistics.median(times[m]), p95(times[m])))
        stored = len(store.answer_rows(sid)) // 2
    finally:
        srv.stop()
    load = os.getloadavg()
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{load[0]:.1f} (shared, noisy); ComfyUI {args.comfyui}; {stored} answers stored at the end")
    print(f"| measure | " + " | ".join(f"run {k + 1} median / p95 (ms)" for k in range(args.repeats))
          + " | median of p95 (ms) | target |")
    print("|---|" + "---|" * (args.repeats + 2))
    for m in measures:
        cells = " | ".join(f"{a:.1f} / {b:.1f}" for a, b in per[m])
        target = "<= 100" if m.startswith(("page load", "answer")) else "-"
        print(f"| {m} | {cells} | {statistics.median(b for _, b in per[m]):.1f} | {target} |")


if __name__ == "__main__":
    main()

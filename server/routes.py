"""HTTP routes of the rating page, added to ComfyUI's own ``PromptServer.instance.routes``.

Pages:  /precise_edit/rating                  the studies list (linked from ComfyUI's menu)
        /precise_edit/rating/rate/<study>     the rater page (``#key=<rater key>``)
        /precise_edit/rating/results/<study>  results and export (``#owner=<owner token>``)
API:    /precise_edit/rating/api/...          JSON; raters send ``X-Rater-Token``, owners ``X-Owner-Token``

Unknown studies, items, images and tokens are all answered 404 with no detail; answers that can never
be valid 400 with what to change; a duplicate 409; a database that is locked or a full disk 503 (the
page keeps the answer and resends it). Bodies over ``MAX_BODY`` bytes are refused (413).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import sqlite3
from pathlib import Path

from aiohttp import web

from . import stats
from .store import Duplicate, Invalid, NotFound, RatingStore

log = logging.getLogger(__name__)
PREFIX = "/precise_edit/rating"
MAX_BODY = 16 * 1024
STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"list": "list.html", "rate": "rate.html", "results": "results.html"}
ASSETS = {"rating.css": "text/css", "rate.js": "text/javascript", "results.js": "text/javascript",
          "list.js": "text/javascript"}
NOT_SAVED = "not saved: the database is busy or the disk is full; the answer is kept and will be resent"


def _json(data, status: int = 200) -> web.Response:
    return web.json_response(stats.clean(data), status=status, headers={"Cache-Control": "no-store"})


def _not_found() -> web.Response:
    return _json({"error": "not found"}, 404)


async def _body(request: web.Request) -> dict:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(raw))
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise Invalid("the body must be a JSON object")
    return data


def _errors(handler):
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except NotFound:
            return _not_found()
        except Invalid as e:
            return _json({"error": str(e)}, 400)
        except OverflowError:   # a number too large for the database (sqlite3 refuses it before any query)
            return _json({"error": "a number in the request is out of range"}, 400)
        except Duplicate as e:
            return _json({"error": str(e)}, 409)
        except web.HTTPRequestEntityTooLarge:
            return _json({"error": f"the body is over {MAX_BODY} bytes"}, 413)
        except sqlite3.OperationalError as e:
            log.warning("rating page: %s (%s)", NOT_SAVED, e)
            return _json({"error": NOT_SAVED}, 503)
    return wrapped


def _token(request: web.Request, header: str, query: str) -> str:
    return request.headers.get(header) or request.query.get(query) or ""


def register(routes: web.RouteTableDef, store_root) -> None:
    """Add the rating routes to ``routes``. ``store_root()`` gives the store's folder (called on first
    use, so ComfyUI's user directory is read after its command line was parsed)."""
    holder: dict = {}

    def store() -> RatingStore:
        if "s" not in holder:
            holder["s"] = RatingStore(store_root(),
                                      busy_timeout=float(os.environ.get("PRECISE_EDIT_RATING_BUSY_TIMEOUT", "2")))
        return holder["s"]

    def page(name: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(STATIC / PAGES[name], headers={"Cache-Control": "no-store"})
        return handler

    routes.get(PREFIX)(page("list"))
    routes.get(PREFIX + "/rate/{study}")(page("rate"))
    routes.get(PREFIX + "/results/{study}")(page("results"))

    @routes.get(PREFIX + "/static/{name}")
    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:   # a fixed list: the request never names a file
            return _not_found()
        return web.FileResponse(STATIC / name, headers={"Content-Type": ASSETS[name], "Cache-Control": "no-cache"})

    @routes.get(PREFIX + "/api/studies")
    @_errors
    async def list_studies(request):
        return _json({"studies": store().list_studies()})

    @routes.post(PREFIX + "/api/studies/{study}/join")
    @_errors
    async def join(request):
        body = await _body(request)
        token = store().join(request.match_info["study"], str(body.get("key", "")), body.get("name") or "")
        return _json({"token": token})

    @routes.get(PREFIX + "/api/me")
    @_errors
    async def me(request):
        return _json(store().rater_view(_token(request, "X-Rater-Token", "t")))

    @routes.post(PREFIX + "/api/answers")
    @_errors
    async def answer(request):
        token = _token(request, "X-Rater-Token", "t")
        store().rater(token)   # an unknown rater learns nothing about the body's faults
        body = await _body(request)
        out = store().save_answer(token, body.get("item"), body.get("scores"), body.get("better"),
                                  body.get("client_id"))
        return _json(out)

    @routes.post(PREFIX + "/api/undo")
    @_errors
    async def undo(request):
        return _json({"item": store().undo_last(_token(request, "X-Rater-Token", "t"))})

    @routes.get(PREFIX + "/api/images/{image}")
    @_errors
    async def image(request):
        path = store().image_path(request.match_info["image"], _token(request, "X-Rater-Token", "t"))
        return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": "private, max-age=3600"})

    @routes.get(PREFIX + "/api/studies/{study}/results")
    @_errors
    async def results(request):
        info = store().check_owner(request.match_info["study"], _token(request, "X-Owner-Token", "owner"))
        summary = stats.summarize(store().answer_rows(info["id"]))
        return _json({"study": info, **summary})

    @routes.get(PREFIX + "/api/studies/{study}/export.csv")
    @_errors
    async def export(request):
        info = store().check_owner(request.match_info["study"], _token(request, "X-Owner-Token", "owner"))
        rows = store().answer_rows(info["id"])
        kind = request.query.get("kind", "answers")
        if kind == "summary":
            rows = stats.clean(stats.summarize(rows)["methods"])
        elif kind != "answers":
            raise Invalid("kind: 'answers' or 'summary'")
        buf = io.StringIO()
        if rows:
            w = csv.DictWriter(buf, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return web.Response(text=buf.getvalue(), content_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="rating_{info["id"]}_{kind}.csv"',
            "Cache-Control": "no-store"})


def register_on_comfy() -> bool:
    """Register on ComfyUI's running PromptServer (once); False when there is none (tests, scripts)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    inst = getattr(PromptServer, "instance", None)
    if inst is None or getattr(inst, "_precise_edit_rating", False):
        return False
    import folder_paths

    register(inst.routes, lambda: os.path.join(folder_paths.get_user_directory(), "precise_edit", "rating"))
    inst._precise_edit_rating = True
    return True

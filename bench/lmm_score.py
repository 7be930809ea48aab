"""LMM Score: a vision-language model behind an OpenAI-compatible chat endpoint rates an edit.

The rubric paraphrases the "LMM Score" of EditEval (Y. Huang et al., "Diffusion Model-Based Image
Editing: A Survey", 2024, github.com/SiatMMLab/Awesome-Diffusion-Model-Based-Image-Editing-Methods):
the model sees the source image, the edited image and the instruction and gives four sub-scores on a
1-10 scale (editing accuracy, contextual preservation, visual quality, logical realism); the LMM Score
is their weighted sum (WEIGHTS). The wording below is ours, not the survey's prompt.

No ComfyUI import: the node (nodes/evaluation/lmm_score.py) and the command (scripts/judge_edits.py lmm)
share it. Answers are cached in SQLite per (source, edit, instruction, model, rubric version).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

RUBRIC_VERSION = "editeval-lmm-v1"
ASPECTS = ("editing_accuracy", "contextual_preservation", "visual_quality", "logical_realism")
WEIGHTS = {"editing_accuracy": 0.4, "contextual_preservation": 0.3, "visual_quality": 0.2, "logical_realism": 0.1}
SCALE = (1, 10)

SYSTEM_PROMPT = "You are a strict, consistent judge of image edits. You answer with JSON only."
RUBRIC = """The first image is the original, the second is the result of editing it with this instruction:
"{instruction}"

Rate the edit on four aspects, each an integer from 1 (very poor) to 10 (excellent):
- editing_accuracy: does the edited image do exactly what the instruction asks (right object, attribute, place, amount)?
- contextual_preservation: is everything the instruction does not mention left as it was (background, identity, layout)?
- visual_quality: is the result free of artefacts, blur, seams, distorted shapes or colour shifts?
- logical_realism: is the result physically and semantically plausible (lighting, shadows, perspective, proportions)?

Answer with one JSON object and nothing else, e.g.
{{"editing_accuracy": 7, "contextual_preservation": 9, "visual_quality": 8, "logical_realism": 8, "reason": "one sentence"}}"""


class JudgeError(RuntimeError):
    """One case could not be scored (message says why); other cases go on."""


@dataclass
class Judgement:
    score: float | None
    aspects: dict = field(default_factory=dict)
    error: str = ""
    attempts: int = 0
    cached: bool = False
    raw: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def weighted(aspects: dict) -> float:
    return round(sum(WEIGHTS[a] * aspects[a] for a in ASPECTS), 4)


_NUMBER = r"(\d+(?:\.\d+)?)"


def parse_scores(text: str) -> dict:
    """The four sub-scores from an answer: a JSON object (also inside a code fence or prose), or lines
    like ``Editing accuracy: 7/10``. Raises JudgeError (refusal, missing or out-of-range scores)."""
    if not isinstance(text, str) or not text.strip():
        raise JudgeError("empty answer")
    found: dict = {}
    for m in re.finditer(r"\{[^{}]*\}", text, re.S):
        try:
            obj = json.loads(m.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict):
            norm = {re.sub(r"[^a-z]+", "_", str(k).lower()).strip("_"): v for k, v in obj.items()}
            for a in ASPECTS:
                v = norm.get(a)
                if isinstance(v, str) and re.fullmatch(r"\s*" + _NUMBER + r"\s*(/\s*10)?\s*", v):
                    v = float(re.match(r"\s*" + _NUMBER, v).group(1))
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    found[a] = float(v)
            if len(found) == len(ASPECTS):
                break
    if len(found) < len(ASPECTS):
        for a in ASPECTS:
            if a in found:
                continue
            words = r"[\s_\-]*".join(a.split("_"))
            m = re.search(r"\**" + words + r"\**\s*[:=\-]?\s*\**\s*" + _NUMBER + r"\s*(?:/\s*10)?", text, re.I)
            if m:
                found[a] = float(m.group(1))
    missing = [a for a in ASPECTS if a not in found]
    if missing:
        head = " ".join(text.split())[:120]
        raise JudgeError(f"no {', '.join(missing)} score in the answer (refused or malformed): {head!r}")
    bad = {a: v for a, v in found.items() if not SCALE[0] <= v <= SCALE[1]}
    if bad:
        raise JudgeError(f"scores outside {SCALE[0]}..{SCALE[1]}: {bad}")
    return found


class Cache:
    """SQLite store of successful answers, keyed by the images, instruction, model and rubric."""

    def __init__(self, path: str | None):
        self.path = path
        self._lock = threading.Lock()
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with self._connect() as db:
                db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, instruction TEXT,"
                           " aspects TEXT, raw TEXT, created REAL)")

    def _connect(self):
        return sqlite3.connect(self.path, timeout=10)

    @staticmethod
    def key(source_png: bytes, edited_png: bytes, instruction: str, model: str) -> str:
        h = hashlib.sha256()
        for part in (RUBRIC_VERSION.encode(), hashlib.sha256(source_png).digest(), hashlib.sha256(edited_png).digest(),
                     instruction.encode(), model.encode()):
            h.update(len(part).to_bytes(8, "little") + part)
        return h.hexdigest()

    def get(self, key: str):
        if not self.path:
            return None
        with self._lock, self._connect() as db:
            row = db.execute("SELECT aspects, raw FROM answers WHERE key = ?", (key,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def put(self, key: str, model: str, instruction: str, aspects: dict, raw: str) -> None:
        if not self.path:
            return
        with self._lock, self._connect() as db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                       (key, model, instruction, json.dumps(aspects), raw, time.time()))


@dataclass
class Endpoint:
    base_url: str                       # e.g. http://127.0.0.1:8000/v1 (vLLM), http://127.0.0.1:11434/v1 (Ollama)
    model: str
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable at call time, never stored
    timeout: float = 60.0
    max_retries: int = 3
    backoff: float = 1.0                # seconds before the first retry, doubled each time
    max_tokens: int = 300

    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def request_body(ep: Endpoint, source_png: bytes, edited_png: bytes, instruction: str) -> dict:
    return {
        "model": ep.model, "temperature": 0, "max_tokens": ep.max_tokens,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": _data_url(source_png)}},
                {"type": "image_url", "image_url": {"url": _data_url(edited_png)}},
                {"type": "text", "text": RUBRIC.format(instruction=instruction.replace('"', "'"))},
            ]},
        ],
    }


class _Retry(Exception):
    pass


def _post(ep: Endpoint, body: dict) -> str:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(ep.api_key_env or "", "")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(ep.url(), data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=ep.timeout) as resp:
            payload = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:200].decode("utf-8", "replace")
        if e.code == 429 or e.code >= 500:
            raise _Retry(f"HTTP {e.code} {detail}") from None
        raise JudgeError(f"HTTP {e.code} from {ep.url()}: {detail}") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise _Retry(f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__) from None
    try:
        data = json.loads(payload)
        choice = data["choices"][0]
        content = choice["message"].get("content")
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        refusal = choice["message"].get("refusal")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _Retry(f"malformed response: {payload[:120]!r}") from None
    if refusal and not content:
        raise JudgeError(f"the model refused: {str(refusal)[:120]}")
    return content or ""


def judge(ep: Endpoint, source_png: bytes, edited_png: bytes, instruction: str, cache: Cache | None = None,
          sleep=time.sleep) -> Judgement:
    """Score one edit; never raises for endpoint or answer problems (the Judgement carries the error)."""
    key = Cache.key(source_png, edited_png, instruction, ep.model)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return Judgement(weighted(hit[0]), hit[0], cached=True, raw=hit[1])
    body = request_body(ep, source_png, edited_png, instruction)
    last = ""
    attempts = 0
    for attempt in range(ep.max_retries + 1):
        if attempt:
            sleep(ep.backoff * 2 ** (attempt - 1))
        attempts += 1
        try:
            raw = _post(ep, body)
            aspects = parse_scores(raw)
        except _Retry as e:
            last = str(e)
            continue
        except JudgeError as e:
            return Judgement(None, error=str(e), attempts=attempts)
        if cache is not None:
            cache.put(key, ep.model, instruction, aspects, raw)
        return Judgement(weighted(aspects), aspects, attempts=attempts, raw=raw)
    return Judgement(None, error=f"gave up after {attempts} attempts: {last}", attempts=attempts)

"""LMMScore: a vision-language model (OpenAI-compatible chat endpoint) rates each edit with the EditEval
LMM Score rubric (bench/lmm_score.py); answers cached in ComfyUI's user directory."""
from __future__ import annotations

import io as _io
import json
import os

import numpy as np
from comfy_api.latest import io
from PIL import Image

import folder_paths

from ...bench import lmm_score as lmm
from ..common import CATEGORY, NodeInputError, note

NODE = "LMMScore"


def cache_path() -> str:
    return os.path.join(folder_paths.get_user_directory(), "precise_edit", "lmm_score.sqlite")


def png_bytes(image01) -> bytes:
    arr = (image01[..., :3].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    buf = _io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class LMMScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="LMM Score (EditEval)",
            category=CATEGORY + "/evaluation",
            description=(
                "A vision-language model behind an OpenAI-compatible chat endpoint (vLLM, llama.cpp, Ollama, ...) "
                "rates each edit 1-10 for editing accuracy, contextual preservation, visual quality and logical "
                "realism (EditEval's LMM Score rubric, paraphrased); the score is their weighted sum. The API key "
                "is read from an environment variable, never stored. A case that fails is reported, not fatal."),
            is_output_node=True,
            inputs=[
                io.Image.Input("source", tooltip="The image before the edit (a batch of one is repeated)."),
                io.Image.Input("edited", tooltip="The edited image(s)."),
                io.String.Input("instruction", default="", multiline=True, tooltip="The editing instruction."),
                io.String.Input("endpoint", default="http://127.0.0.1:8000/v1",
                                tooltip="Base address of the OpenAI-compatible API (…/v1)."),
                io.String.Input("model", default="", tooltip="Model name as the server knows it."),
                io.String.Input("api_key_env", default="OPENAI_API_KEY",
                                tooltip="Name of the environment variable holding the key (empty: none)."),
                io.Float.Input("timeout", default=60.0, min=1.0, max=600.0, step=1.0, tooltip="Seconds per request."),
                io.Int.Input("max_retries", default=3, min=0, max=10, tooltip="Retries on timeouts, 5xx, 429 "
                             "and malformed responses, with exponential backoff."),
                io.Boolean.Input("use_cache", default=True, tooltip="Reuse answers for the same images, "
                                 "instruction and model (SQLite in ComfyUI's user directory)."),
            ],
            outputs=[
                io.Float.Output("score", tooltip="Mean LMM Score of the scored cases (1-10; -1 if none scored)."),
                io.String.Output("report", tooltip="Per case: score and sub-scores, or why it failed."),
            ],
        )

    @classmethod
    def execute(cls, source, edited, instruction="", endpoint="", model="", api_key_env="OPENAI_API_KEY",
                timeout=60.0, max_retries=3, use_cache=True, backoff=1.0) -> io.NodeOutput:
        if not (endpoint or "").strip().lower().startswith(("http://", "https://")):
            raise NodeInputError(f"{NODE}: endpoint must be an http(s) address such as http://127.0.0.1:8000/v1")
        if not (model or "").strip():
            raise NodeInputError(f"{NODE}: give the model name the endpoint serves")
        if not (instruction or "").strip():
            raise NodeInputError(f"{NODE}: give the editing instruction")
        if source.shape[0] not in (1, edited.shape[0]):
            raise NodeInputError(f"{NODE}: source batch ({source.shape[0]}) must be 1 or match edited "
                                 f"({edited.shape[0]})")
        ep = lmm.Endpoint(endpoint.strip(), model.strip(), (api_key_env or "").strip(), float(timeout),
                          int(max_retries), backoff)
        cache = lmm.Cache(cache_path()) if use_cache else None
        rows, lines = [], []
        for i in range(edited.shape[0]):
            src = source[min(i, source.shape[0] - 1)]
            j = lmm.judge(ep, png_bytes(src), png_bytes(edited[i]), instruction.strip(), cache)
            rows.append(j.as_dict())
            if j.score is None:
                lines.append(f"image {i}: failed: {j.error}")
                note(NODE, f"image {i}: {j.error}")
            else:
                subs = ", ".join(f"{a} {j.aspects[a]:g}" for a in lmm.ASPECTS)
                lines.append(f"image {i}: {j.score:.2f} ({subs}){' [cached]' if j.cached else ''}")
        scored = [r["score"] for r in rows if r["score"] is not None]
        mean = float(sum(scored) / len(scored)) if scored else -1.0
        text = "\n".join([f"LMM Score {mean:.2f} over {len(scored)} of {len(rows)} images ({ep.model})"] + lines)
        return io.NodeOutput(mean, text, ui={"text": (text,), "lmm_score": [json.dumps(rows)]})


NODES = [LMMScore]

"""Shared helpers of the ComfyUI side: user-facing errors and logging."""
from __future__ import annotations

import logging

log = logging.getLogger("comfyui-precise-edit")

CATEGORY = "precise-edit"


class NodeInputError(ValueError):
    """Bad input, reported to the user as ``<Node>: <what to change>`` (no torch traceback)."""


def note(node: str, message: str) -> str:
    """Log a note about how an input was adapted, and return it for the node's UI text."""
    text = f"{node}: {message}"
    log.warning(text)
    return text

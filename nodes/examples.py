"""Example pictures for the shipped workflows: copied into ComfyUI's input folder.

Load Image lists only ComfyUI's input folder, so the pictures the templates name
(``example_workflows/input/``, drawn by ``scripts/make_example_images.py``) are copied there
when the pack loads. A file of the same name is never overwritten; any failure is logged
and loading goes on.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .common import log

EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows" / "input"


def install_example_images(input_dir: str | Path | None = None, source: Path = EXAMPLES) -> list[str]:
    """Copy the example pictures missing from ``input_dir`` (ComfyUI's input folder when not
    given); returns the names copied."""
    copied = []
    try:
        if input_dir is None:
            import folder_paths  # noqa: PLC0415

            input_dir = folder_paths.get_input_directory()
        target = Path(input_dir)
        if not source.is_dir():
            return copied
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted(source.glob("*.png")):
            dst = target / src.name
            if dst.exists() or dst.is_symlink():
                continue
            tmp = dst.with_name(dst.name + ".partial")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
            copied.append(src.name)
    except OSError as e:
        log.warning("precise-edit: could not copy the example pictures into the input folder: %s", e)
    if copied:
        log.info("precise-edit: copied example pictures into the input folder: %s", ", ".join(copied))
    return copied

"""SetFID: FID and KID of a set of edits against reference images (folders, runner outputs or batches)."""
from __future__ import annotations

import json
import os

import torch
from comfy_api.latest import io

import folder_paths

from ...bench import set_fid as folders
from ...kernels import set_fid
from ..common import CATEGORY, NodeInputError, note
from . import models

NODE = "SetFID"
FOLDER = "inception"


def register_folder() -> None:
    """``models/inception`` in ComfyUI's folder registry (extra_model_paths.yaml can add places)."""
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = (
            [os.path.join(folder_paths.models_dir, FOLDER)], models.MODEL_EXTENSIONS)


def inception_options() -> list[str]:
    register_folder()
    return folder_paths.get_filename_list(FOLDER) or [set_fid.INCEPTION_FILE]


def inception_path(name: str) -> str:
    register_folder()
    path = folder_paths.get_full_path(FOLDER, name) if name else None
    if path is None:
        where = " or ".join(folder_paths.get_folder_paths(FOLDER)) or f"models/{FOLDER}"
        raise NodeInputError(f"{NODE}: {name or set_fid.INCEPTION_FILE} not found in {where}: put torch-fidelity's "
                             f"InceptionV3 weights ({set_fid.INCEPTION_FILE}) there (see the README, 'FID and KID')")
    return path


def report_text(s: set_fid.SetScore) -> str:
    lines = [f"FID {s.fid:.3f}", f"KID {s.kid_mean:.5f} ± {s.kid_std:.5f} (subsets of {s.kid_subset_size})",
             f"images: {s.n_edited} edited, {s.n_reference} reference"]
    return "\n".join(lines + [f"warning: {w}" for w in s.warnings])


class SetFID(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Set FID / KID",
            category=CATEGORY + "/evaluation",
            description=(
                "FID and KID of a set of edited images against a set of reference images, computed as "
                "torch-fidelity computes them (its TF-compatible InceptionV3, 2048-d pool features). Each set "
                "is a folder of images, a runner output folder, or an IMAGE batch. Reports the sample sizes "
                "and warns when they are too small for FID to mean much. Weights: models/inception."),
            is_output_node=True,
            inputs=[
                io.Combo.Input("inception_model", options=inception_options(),
                               tooltip=f"torch-fidelity's InceptionV3 weights ({set_fid.INCEPTION_FILE}) in "
                                       "models/inception (never downloaded)."),
                io.String.Input("edited_folder", default="", tooltip="Folder of edited images, or a runner "
                                "output folder (its edited.png files). Ignored when 'edited' is connected."),
                io.String.Input("reference_folder", default="", tooltip="Folder of reference (real) images. "
                                "Ignored when 'reference' is connected."),
                io.String.Input("method", default="", optional=True,
                                tooltip="With a runner output folder holding several methods: which one."),
                io.Image.Input("edited", optional=True, tooltip="Edited images as a batch (instead of a folder)."),
                io.Image.Input("reference", optional=True, tooltip="Reference images as a batch."),
            ],
            outputs=[
                io.Float.Output("fid", tooltip="Fréchet Inception Distance (lower = closer to the reference set)."),
                io.Float.Output("kid", tooltip="KID mean over subsets."),
                io.String.Output("report", tooltip="FID, KID ± std, sample sizes and warnings."),
            ],
        )

    @classmethod
    def execute(cls, inception_model=set_fid.INCEPTION_FILE, edited_folder="", reference_folder="", method="",
                edited=None, reference=None) -> io.NodeOutput:
        sets = []
        for name, batch, folder in (("edited", edited, edited_folder), ("reference", reference, reference_folder)):
            if batch is None and not (folder or "").strip():
                raise NodeInputError(f"{NODE}: connect '{name}' images or give {name}_folder")
            if batch is None:
                try:
                    files = folders.image_files(folder.strip(), (method or "").strip() or None
                                                if name == "edited" else None)
                except ValueError as e:
                    raise NodeInputError(f"{NODE}: {name}_folder: {e}") from None
                sets.append(lambda files=files: folders.batches(files))
            else:
                try:
                    images = set_fid.to_uint8_nchw(batch.cpu())
                except ValueError as e:
                    raise NodeInputError(f"{NODE}: '{name}': {e}") from None
                sets.append(lambda images=images: folders.tensor_batches(images))
        path = inception_path(inception_model)
        device = models.device()
        model = set_fid.inception(path, device)
        feats = []
        for name, make in zip(("edited", "reference"), sets):
            try:  # a folder's image that cannot be read is named, not a PIL traceback
                feats.append(set_fid.features(model, make(), device))
            except ValueError as e:
                raise NodeInputError(f"{NODE}: {name}: {e}") from None
        try:
            s = set_fid.score(*feats)
        except ValueError as e:
            raise NodeInputError(f"{NODE}: {e}") from None
        for w in s.warnings:
            note(NODE, w)
        text = report_text(s)
        return io.NodeOutput(s.fid, s.kid_mean, text, ui={"text": (text,), "set_fid": [json.dumps(s.as_dict())]})


NODES = [SetFID]

"""RatingStudy: a human rating study from a ComfyUI batch (source + two to four edited batches), served by
the rating page on ComfyUI's own server (server/). Outputs the rater link and the owner link."""
from __future__ import annotations

import os

from comfy_api.latest import io

import folder_paths

from ...server.store import Invalid, RatingStore
from ...server.studies import items_from_arrays
from ..common import CATEGORY, NodeInputError

NODE = "RatingStudy"
PAGE = "/precise_edit/rating"


def store_root() -> str:
    return os.path.join(folder_paths.get_user_directory(), "precise_edit", "rating")


class RatingStudy(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Rating Study (people judge edits)",
            category=CATEGORY + "/evaluation",
            description=(
                "Writes a blind rating study: raters see the source, the instruction and the edits side by side "
                "in a random order and answer 'instruction followed' (1-5), 'rest kept' (1-5) and which edit is "
                "better. Open the rater link in a browser (menu: Extensions > Precise Edit > Rating studies); the "
                "owner link shows the results (means with 95% CIs, win rates, Bradley-Terry ranking, agreement)."),
            is_output_node=True,
            inputs=[
                io.Image.Input("source", tooltip="The images before the edit (a batch of one is used for every item)."),
                io.Image.Input("edited_a", tooltip="Method A's edits (one per item)."),
                io.Image.Input("edited_b", tooltip="Method B's edits, in the same order."),
                io.Image.Input("edited_c", optional=True, tooltip="A third method (optional)."),
                io.Image.Input("edited_d", optional=True, tooltip="A fourth method (optional)."),
                io.String.Input("methods", default="A, B",
                                tooltip="Method names, comma-separated, one per connected edited input."),
                io.String.Input("instruction", default="", multiline=True,
                                tooltip="The editing instruction; one line per item, or one line for all."),
                io.String.Input("study_name", default="rating study", tooltip="Shown to raters."),
            ],
            outputs=[
                io.String.Output("rater_url", tooltip="Send this link to raters (path on this ComfyUI server)."),
                io.String.Output("owner_url", tooltip="Results and export; it holds the owner token: keep it."),
            ],
        )

    @classmethod
    def execute(cls, source, edited_a, edited_b, edited_c=None, edited_d=None, methods="A, B", instruction="",
                study_name="rating study") -> io.NodeOutput:
        batches = [b for b in (edited_a, edited_b, edited_c, edited_d) if b is not None]
        names = [m.strip() for m in (methods or "").split(",") if m.strip()]
        if len(names) != len(batches):
            raise NodeInputError(f"{NODE}: methods names {len(names)} method(s) but {len(batches)} edited inputs "
                                 "are connected; give one name per edited input, comma-separated")
        lines = [ln.strip() for ln in (instruction or "").splitlines() if ln.strip()]
        if not lines:
            raise NodeInputError(f"{NODE}: give the editing instruction (one line per item, or one for all)")
        try:
            items = items_from_arrays(source.cpu().numpy(), [b.cpu().numpy() for b in batches], names, lines)
            made = RatingStore(store_root()).create_study(study_name or "rating study", items)
        except Invalid as e:
            raise NodeInputError(f"{NODE}: {e}") from None
        rater = f"{PAGE}/rate/{made['study']}#key={made['rater_key']}"
        owner = f"{PAGE}/results/{made['study']}#owner={made['owner_token']}"
        text = (f"Study '{study_name}': {len(items)} item(s), {len(names)} methods"
                ".\n"
                f"Raters: {rater}\nResults (keep private): {owner}")
        return io.NodeOutput(rater, owner, ui={"text": (text,)})


NODES = [RatingStudy]

"""Tests-only ComfyUI node pack: tiny model loaders and stub text encoders.

Loaded only by the live-server tests (never shipped to users, never linked into a user's
ComfyUI). The workflow harness swaps a workflow's checkpoint / UNet / text-encoder / VAE
loaders for these nodes, so every shipped workflow runs without downloading weights.
"""
from comfy_api.latest import ComfyExtension, io

from .synthetic_models import MODELS as SYNTHETIC_MODELS
from .synthetic_models import UNETS as SYNTHETIC_UNETS
from .tiny_models import FIXTURES, StubCLIP

CATEGORY = "precise-edit/tests"
FAMILIES = list(FIXTURES)


def _family_input():
    return io.Combo.Input("family", options=FAMILIES, tooltip="Which tiny fixture to build.")


class PETestTinyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PETestTinyModel", display_name="Tiny Model (tests)", category=CATEGORY,
                         description="A small real ComfyUI model with seeded random weights (tests only).",
                         inputs=[_family_input(), io.Int.Input("seed", default=0, min=0, max=2**31,
                                                               tooltip="Weight seed.")],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, family, seed=0):
        return io.NodeOutput(FIXTURES[family].model(seed))


class PETestTinyCLIP(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PETestTinyCLIP", display_name="Stub Text Encoder (tests)", category=CATEGORY,
                         description="Deterministic conditioning from the prompt text (tests only).",
                         inputs=[_family_input()], outputs=[io.Clip.Output()])

    @classmethod
    def execute(cls, family):
        return io.NodeOutput(StubCLIP(FIXTURES[family].family))


class PETestTinyVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PETestTinyVAE", display_name="Tiny VAE (tests)", category=CATEGORY,
                         description="A small random VAE of the family's architecture (tests only).",
                         inputs=[_family_input()], outputs=[io.Vae.Output()])

    @classmethod
    def execute(cls, family):
        return io.NodeOutput(FIXTURES[family].vae())


class PETestTinyCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PETestTinyCheckpoint", display_name="Tiny Checkpoint (tests)",
                         category=CATEGORY, description="MODEL, CLIP and VAE fixtures at once (tests only).",
                         inputs=[_family_input()],
                         outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()])

    @classmethod
    def execute(cls, family):
        fx = FIXTURES[family]
        return io.NodeOutput(fx.model(0), StubCLIP(fx.family), fx.vae())


class PETestSyntheticModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PETestSyntheticModel", display_name="Synthetic-Set Model (tests)", category=CATEGORY,
                         description="A small FLUX (text-to-image), Kontext-style editor, SD1.5-class UNet (sd) or "
                                     "InstructPix2Pix-style UNet (ip2p, 8 input channels) trained on the synthetic "
                                     "editing set (synthetic/weights/), with its VAE and text encoder (tests only).",
                         inputs=[io.Combo.Input("model", options=list(SYNTHETIC_MODELS))],
                         outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()])

    @classmethod
    def execute(cls, model):
        from .synthetic_models import models

        if model not in SYNTHETIC_MODELS:
            raise ValueError(f"PETestSyntheticModel: model must be one of {', '.join(SYNTHETIC_MODELS)}")
        m = models()
        if model in SYNTHETIC_UNETS:
            return io.NodeOutput(m.unet(model), m.SyntheticCLIP(), m.vae(m.VAE_OF[model]))
        return io.NodeOutput(m.flux(model), m.SyntheticCLIP(), m.vae(m.VAE_OF[model]))


class PETestSyntheticTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PETestSyntheticTextEncoder", display_name="Synthetic-Set Text Encoder (tests)",
                         category=CATEGORY, description="Caption or instruction words -> the conditioning the "
                                                        "synthetic models were trained with (tests only).",
                         inputs=[], outputs=[io.Clip.Output()])

    @classmethod
    def execute(cls):
        from .synthetic_models import models

        return io.NodeOutput(models().SyntheticCLIP())


class _Extension(ComfyExtension):
    async def get_node_list(self):
        return [PETestTinyModel, PETestTinyCLIP, PETestTinyVAE, PETestTinyCheckpoint, PETestSyntheticModel,
                PETestSyntheticTextEncoder]


async def comfy_entrypoint():
    return _Extension()

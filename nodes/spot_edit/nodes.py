"""SpotEdit nodes: SpotSelector (the judge), SpotFusionSampler (patched MODEL), SpotEditPreview."""
from __future__ import annotations

import math

import torch
from comfy_api.latest import io, ui

from ...kernels import spot
from ...kernels.token_mask import overlay_image
from ..common import CATEGORY, NodeInputError, note
from ..edit_region import pixel_region
from ..families import FLUX, QWEN_IMAGE, detect_family
from .patch import MODES, Selector, patch_model, state_of

SpotSelectorType = io.Custom("SPOT_SELECTOR")
SPOT_CATEGORY = f"{CATEGORY}/spot-edit"


class SpotSelector(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpotSelector", display_name="SpotEdit Selector", category=SPOT_CATEGORY,
            description=("Decides which tokens have settled on the source image during sampling: a token whose "
                         "score (current clean estimate vs the reference) is at most tau is reused, not "
                         "recomputed. The perceptual judge compares features of the model's own VAE decoder."),
            inputs=[
                io.Combo.Input("judge", options=list(spot.JUDGES), default="perceptual",
                               tooltip="perceptual: VAE decoder features (needs the VAE); L4: mean |difference|^4 "
                                       "over latent channels; cosine: 1 - token cosine similarity."),
                io.Float.Input("tau", default=0.2, min=-1.0, max=10.0, step=0.01,
                               tooltip="Settled threshold: 0.2 suits FLUX.1 Kontext, 0.15 Qwen-Image-Edit (the "
                                       "authors' values; the perceptual judge uses their decoder layers, so they "
                                       "carry over). Lower computes more tokens; a negative value keeps every "
                                       "token active. In 'authors code' mode with the cosine judge, tau is their "
                                       "similarity threshold (reuse above it)."),
                io.Int.Input("dilation", default=0, min=0, max=16,
                             tooltip="Grow the active region by this many tokens (1 suits Qwen-Image-Edit)."),
                io.Combo.Input("mask_mode", options=list(spot.MASK_MODES), default="union",
                               tooltip="How the optional mask combines with the judge: replace (the mask alone "
                                       "decides), union (also compute the masked area), intersect (compute only "
                                       "inside the mask)."),
                io.Vae.Input("vae", optional=True, tooltip="The model's VAE, for the perceptual judge."),
                io.Mask.Input("mask", optional=True, tooltip="Optional region that may change (1 = edit)."),
            ],
            outputs=[SpotSelectorType.Output("selector", tooltip="Plug into SpotFusionSampler.")],
        )

    @classmethod
    def execute(cls, judge, tau, dilation, mask_mode, vae=None, mask=None) -> io.NodeOutput:
        node = "SpotSelector"
        if judge not in spot.JUDGES:
            raise NodeInputError(f"{node}: unknown judge {judge!r}; choose one of {', '.join(spot.JUDGES)}")
        if mask_mode not in spot.MASK_MODES:
            raise NodeInputError(f"{node}: unknown mask_mode {mask_mode!r}; choose one of "
                                 f"{', '.join(spot.MASK_MODES)}")
        if not math.isfinite(float(tau)):
            raise NodeInputError(f"{node}: tau is {tau}; give a finite number (0.2 for FLUX.1 Kontext, 0.15 for "
                                 f"Qwen-Image-Edit)")
        lines = []
        if judge == "perceptual" and vae is None:
            if mask is not None and mask_mode == "replace":
                judge = "L4"  # never used: the mask decides
            else:
                raise NodeInputError(f"{node}: the perceptual judge needs the VAE input; connect the model's VAE "
                                     f"or choose the L4 or cosine judge")
        m = None
        if mask is not None:
            m = mask if mask.ndim == 3 else mask.unsqueeze(0)
            if not bool(torch.isfinite(m).all()):
                raise NodeInputError(f"{node}: the mask holds NaN or infinite values; connect a mask with values "
                                     f"in 0..1")
            if m.shape[0] != 1:
                lines.append(note(node, f"{m.shape[0]} masks given; using the first"))
                m = m[:1]
            if not bool((m > 0).any()) and mask_mode == "replace":
                raise NodeInputError(f"{node}: the mask is empty; with mask_mode 'replace' it must mark the region "
                                     f"to edit")
        sel = Selector(judge=judge, tau=tau, dilation=dilation, mask=m, mode=mask_mode, vae=vae)
        if m is not None and mask_mode == "replace":
            lines.insert(0, "judge: none (the mask decides which tokens are computed)")
        else:
            lines.insert(0, f"judge: {sel.describe()}; tau {tau:g}")
        return io.NodeOutput(sel, ui={"text": ("\n".join(lines),)})


class SpotFusionSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpotFusionSampler", display_name="SpotEdit Fusion (patch model)", category=SPOT_CATEGORY,
            description=("Patches a FLUX.1 Kontext or Qwen-Image-Edit model so ComfyUI's standard samplers stop "
                         "computing tokens that have settled on the source: after warm-up, only text and "
                         "active image tokens are computed; reference and settled tokens enter attention from "
                         "a cache. Settled tokens end bit-exact on the source latent. Works with KSampler, "
                         "SamplerCustomAdvanced and EasyCache."),
            inputs=[
                io.Model.Input("model", tooltip="FLUX.1 Kontext (reference via ReferenceLatent) or Qwen-Image-Edit."),
                SpotSelectorType.Input("selector", tooltip="From SpotSelector."),
                io.Int.Input("warmup_steps", default=4, min=1, max=100,
                             tooltip="First steps computed fully (they also fill the cache)."),
                io.Int.Input("reset_every", default=9, min=0, max=100,
                             tooltip="After warm-up, one full step every this many steps refreshes the cache "
                                     "(0 = never). Smaller is closer to the full model, larger is faster."),
                io.Combo.Input("fusion", options=list(spot.SCHEDULES), default="cos2",
                               tooltip="What settled tokens contribute: cos2 (paper: reference features early, "
                                       "cached image features late) or static (cached image features only)."),
                io.Combo.Input("mode", options=list(MODES), default="paper", optional=True,
                               tooltip="paper: the inputs above, settled tokens land exactly on the source. "
                                       "authors code: reproduces the authors' released pipelines (their full "
                                       "steps 0-3, 13, 22, 31 of 50 scaled to the step count, their practically "
                                       "static cache, settled tokens keep the previous step's velocity; "
                                       "warmup_steps, reset_every and fusion are not used). Try it when an "
                                       "edit comes out weaker than without SpotEdit (README)."),
            ],
            outputs=[io.Model.Output("patched", tooltip="The patched model for KSampler / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, selector, warmup_steps, reset_every, fusion, mode="paper") -> io.NodeOutput:
        node = "SpotFusionSampler"
        if fusion not in spot.SCHEDULES:
            raise NodeInputError(f"{node}: unknown fusion {fusion!r}; choose one of {', '.join(spot.SCHEDULES)}")
        if mode not in MODES:
            raise NodeInputError(f"{node}: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if not isinstance(selector, Selector):
            raise NodeInputError(f"{node}: the selector input must come from a SpotEdit Selector node")
        family = detect_family(model, node, allowed=(FLUX, QWEN_IMAGE))
        patched, state = patch_model(model, family, selector, warmup_steps, reset_every, fusion, mode)
        return io.NodeOutput(patched, ui={"text": (f"{state.describe()}\njudge: {selector.describe()}",)})


class SpotEditPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpotEditPreview", display_name="SpotEdit Preview", category=SPOT_CATEGORY,
            description=("After sampling with a SpotFusionSampler model: shows the active (red, computed) and "
                         "settled (blue, reused) tokens of a step, and the fraction of image tokens computed at "
                         "every step, to tune tau."),
            inputs=[
                io.Model.Input("model", tooltip="The model from SpotFusionSampler that sampled."),
                io.Latent.Input("samples", tooltip="The sampler's output (makes this node run after it)."),
                io.Int.Input("step", default=-1, min=-1, max=1000,
                             tooltip="Step to show; -1 = the last selective step."),
                io.Image.Input("image", optional=True, tooltip="Picture to draw on (e.g. the source image)."),
            ],
            outputs=[io.Image.Output("overlay", tooltip="Active tokens red, settled tokens blue."),
                     io.Float.Output("computed_fraction", tooltip="Image tokens computed over the whole run.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, samples, step, image=None) -> io.NodeOutput:
        node = "SpotEditPreview"
        state = state_of(model)
        if state is None:
            raise NodeInputError(f"{node}: this model was not patched by SpotFusionSampler")
        run = state.last
        if run is None:
            raise NodeInputError(f"{node}: no sampling run with this model yet")
        selective = [(s, a) for s, full, a in run.history if not full]
        fr = state.fractions()
        total = sum(f for _, _, f in fr) / max(1, len(fr))
        th, tw = -(-run.latent_hw[0] // state.family.patch), -(-run.latent_hw[1] // state.family.patch)
        if step >= 0:
            chosen = [a for s, a in selective if s == step]
            if not chosen:
                full_steps = sorted({s for s, full, _ in run.history if full})
                if step in full_steps:
                    chosen = [torch.ones(th, tw, dtype=torch.bool)]
                else:
                    raise NodeInputError(f"{node}: step {step} was not sampled (steps 0..{run.last_step})")
            active = chosen[-1]
        else:
            active = selective[-1][1] if selective else torch.ones(th, tw, dtype=torch.bool)
        px = state.family.token_px
        if image is None:
            image = torch.full((1, run.latent_hw[0] * state.family.downscale,
                                run.latent_hw[1] * state.family.downscale, 3), 0.5)
        H, W = image.shape[1:3]
        region = pixel_region(active.unsqueeze(0), px, (H, W))[0]
        overlay = torch.stack([overlay_image(image[i].cpu(), region, px) for i in range(image.shape[0])])
        lines = [f"judge: {run.judge}", f"mode: {state.describe()}",
                 f"computed {total:.1%} of image tokens over {len(fr)} model calls"]
        if run.leftover > 0:
            lines.append(f"the run ended at sigma {run.leftover:.4g} with noise left: settled tokens were not "
                         f"pasted (the stage that finishes the image ends them; patch it with SpotEdit too to "
                         f"keep them bit-exact)")
        lines += [f"step {s}: {'full' if full else 'selective'} {f:.1%}" for s, full, f in fr]
        preview = ui.PreviewImage(overlay, cls=cls)
        return io.NodeOutput(overlay, float(total), ui={**preview.as_dict(), "text": ("\n".join(lines),)})


NODES = [SpotSelector, SpotFusionSampler, SpotEditPreview]

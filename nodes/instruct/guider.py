"""InstructGuider's sampling side: a ComfyUI GUIDER (a ``CFGGuider`` subclass, the type
SamplerCustomAdvanced takes) with InstructPix2Pix's two scales, per-step schedules and dynamic
negative guidance.

Prediction at step ``i`` with text scale ``t_i`` and image scale ``m_i`` (the model's
predictions for: ``pos`` = image + instruction, ``img`` = image only, ``neg`` = neither):

* with an image-only condition (InstructPix2Pix, or Kontext / Qwen-Image-Edit fed a reference
  image without the instruction): ``cfg(img, neg, m_i) + t_i (pos - img)``, ComfyUI's
  DualCFGGuider ("regular") term for term, including its skipping of branches whose scale is 1;
* without it (true CFG, e.g. FLUX.1 Kontext or Qwen-Image-Edit with a negative prompt):
  ``cfg(pos, neg, t_i)``, as CFGGuider;
* with a negative instruction (DNG): minus ``lambda_t (D_neg - D_ref)`` where ``D_neg`` is the
  prediction with the negative instruction, ``D_ref`` the image-only prediction (else the
  negative's) and ``lambda_t`` follows the posterior of ``kernels/guidance.py``.

All conditions go to ComfyUI's ``calc_cond_batch`` in one call, which batches them into as few
model evaluations as memory and their shapes allow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import comfy.samplers
import node_helpers
import torch

from ...kernels import guidance as G
from ...kernels.surgery import step_index
from ..common import NodeInputError

NODE = "InstructGuider"


@dataclass
class ScaleSpec:
    name: str                # "text" or "image", for messages
    kind: str = "constant"
    start: float = 1.0
    end: float = 1.0
    values: str = ""

    def resolve(self, steps: int) -> list[float]:
        try:
            return G.schedule(self.kind, steps, self.start, self.end, self.values)
        except G.GuidanceError as e:
            raise NodeInputError(f"{NODE}: {self.name}_schedule: {e}") from None


@dataclass
class Plan:
    text: ScaleSpec
    image: ScaleSpec
    dng: G.DNGSettings | None = None
    notes: list = field(default_factory=list)


def _sigma(timestep) -> float:
    return float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)


class InstructGuidance(comfy.samplers.CFGGuider):
    """GUIDER of InstructGuider (see the module docstring)."""

    def __init__(self, model_patcher, plan: Plan):
        super().__init__(model_patcher)
        self.plan = plan
        self.text_scales: list[float] = []
        self.image_scales: list[float] = []
        self.used: list[tuple[int, float, float, float]] = []  # (step, text, image, mean negative scale)
        self.dng_state = None

    def set_conds(self, positive, negative, image_only=None, negative_instruction=None):
        conds = {"positive": positive, "negative": negative}
        if image_only is not None:
            conds["middle"] = node_helpers.conditioning_set_values(image_only, {"prompt_type": "negative"})
        if negative_instruction is not None:
            conds["negative_instruction"] = negative_instruction
        self.inner_set_conds(conds)

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
               disable_pbar=False, seed=None):
        steps = max(int(sigmas.numel()) - 1, 1)
        self.text_scales = self.plan.text.resolve(steps)
        self.image_scales = self.plan.image.resolve(steps)
        self.used = []
        self.dng_state = None
        if self.plan.dng is not None:
            self.dng_state = G.DNGState(self.plan.dng, int(noise.shape[0]))
        return super().sample(noise, latent_image, sampler, sigmas, denoise_mask=denoise_mask,
                              callback=callback, disable_pbar=disable_pbar, seed=seed)

    def scales_at(self, timestep, model_options) -> tuple[int, float, float]:
        """Step index of this model call (from the sampler's sigmas) and the two scales there."""
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        steps = 1 if sigmas is None else max(int(sigmas.numel()) - 1, 1)
        if len(self.text_scales) != steps:  # called outside sample(): resolve for these sigmas
            self.text_scales = self.plan.text.resolve(steps)
            self.image_scales = self.plan.image.resolve(steps)
        i = 0 if sigmas is None else step_index(_sigma(timestep), sigmas)
        return i, self.text_scales[i], self.image_scales[i]

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        cs = comfy.samplers
        i, t, m = self.scales_at(timestep, model_options)
        positive = self.conds.get("positive")
        negative = self.conds.get("negative")
        middle = self.conds.get("middle")
        neg_instr = self.conds.get("negative_instruction")
        dng = neg_instr is not None and self.plan.dng is not None
        skip = not model_options.get("disable_cfg1_optimization", False)
        if middle is not None:
            use_neg = None if (skip and math.isclose(m, 1.0)) else negative
            use_mid = None if (skip and math.isclose(m, 1.0) and math.isclose(t, 1.0) and not dng) else middle
            conds = [use_neg, use_mid, positive] + ([neg_instr] if dng else [])
            out = cs.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
            result = cs.cfg_function(self.inner_model, out[1], out[0], m, x, timestep,
                                     model_options=model_options, cond=use_mid, uncond=use_neg) \
                + (out[2] - out[1]) * t
            ref = out[1]
        else:
            use_neg = None if (skip and math.isclose(t, 1.0) and not dng) else negative
            conds = [positive, use_neg] + ([neg_instr] if dng else [])
            out = cs.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
            result = cs.cfg_function(self.inner_model, out[0], out[1], t, x, timestep,
                                     model_options=model_options, cond=positive, uncond=use_neg)
            ref = out[1]
        lam_mean = 0.0
        if dng:
            if self.dng_state is None:  # called outside sample() (e.g. a test): start a posterior
                self.dng_state = G.DNGState(self.plan.dng, int(x.shape[0]))
            lam = self.dng_state.observe(x, _sigma(timestep), ref, out[-1])
            lam = lam.to(device=result.device, dtype=result.dtype)
            result = result - lam.reshape(-1, *([1] * (result.ndim - 1))) * (out[-1] - ref)
            lam_mean = float(lam.mean())
        self.used.append((i, t, m, lam_mean))
        return result


def make_guider(model, positive, negative, plan: Plan, image_only=None, negative_instruction=None):
    g = InstructGuidance(model, plan)
    g.set_conds(positive, negative, image_only=image_only, negative_instruction=negative_instruction)
    return g

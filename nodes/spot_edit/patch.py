"""SpotEdit for FLUX.1 Kontext and Qwen-Image-Edit: stop computing tokens that have
settled on the source (``shared/methods/spot-edit.md``).

SpotFusionSampler returns a patched clone of the user's MODEL, so it drops into the
workflows users already have (ReferenceLatent / TextEncodeQwenImageEdit -> KSampler or
SamplerCustomAdvanced). Everything is installed through ComfyUI's own mechanisms:

* an ``OUTER_SAMPLE`` wrapper (on the clone) finds the reference latent ``Y`` in the
  conditioning, installs the token-dropping patches and a ``DIFFUSION_MODEL`` wrapper into
  that sampling run's private ``model_options``, and pastes ``Y`` bit-exactly onto every
  token settled on the last selective step after sampling;
* the ``DIFFUSION_MODEL`` wrapper decides per model call: full step (all tokens, record
  keys/values of image and reference tokens, remember ``x0_hat``) or selective step (the
  SpotSelector picks active tokens from the latest ``x0_hat``; only text + active image
  tokens are computed; reference and settled tokens come from the cache with the
  cos^2 fusion; settled tokens get the velocity ``(x - Y) / s``).

When a selective step finds no settled token, it runs as a plain full step, so a selector
that keeps every token active reproduces the unpatched model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

import comfy.patcher_extension as pe

from ...kernels import spot
from ...kernels.kv_attention import keep_background
from ...kernels.token_mask import build_token_masks, expand_token_mask
from ..families import FLUX, Family
from ..flux_tokens import TokenController, TokenPlan
from .vae_features import UnsupportedVAE, decoder_features

log = logging.getLogger("comfyui-precise-edit")
KEY = "precise_edit_spot"


@dataclass
class Selector:
    """What SpotSelector produces: how to judge which tokens have settled."""

    judge: str = "perceptual"
    tau: float = 0.2
    dilation: int = 0
    mask: torch.Tensor | None = None  # pixel mask [1, H, W], 1 = edit (active)
    mode: str = "union"
    vae: object = None
    notes: list = field(default_factory=list)

    def token_scores(self, x0_user: torch.Tensor, y_user: torch.Tensor, patch: int) -> torch.Tensor:
        if self.judge == "perceptual":
            if self.vae is None:
                raise ValueError("the perceptual judge needs a VAE")
            try:
                fa = decoder_features(self.vae, x0_user)
                fb = decoder_features(self.vae, y_user.expand_as(x0_user))
            except UnsupportedVAE as e:
                if not self.notes:
                    self.notes.append(f"SpotSelector: {e}; using the L4 judge instead")
                    log.warning(self.notes[-1])
                return spot.scores_l4(x0_user, y_user, patch)
            hw = spot.as_4d(x0_user).shape[-2:]
            return spot.scores_from_features(fa, fb, tuple(hw), patch)
        if self.judge == "L4":
            return spot.scores_l4(x0_user, y_user, patch)
        return spot.scores_cosine(x0_user, y_user, patch)

    def user_tokens(self, latent_hw, patch) -> torch.Tensor | None:
        if self.mask is None:
            return None
        return build_token_masks(self.mask, latent_hw, patch, allow_empty=True).tokens

    def active(self, x0_user, y_user, latent_hw, patch) -> tuple[torch.Tensor, float]:
        user = self.user_tokens(latent_hw, patch)
        if user is not None and self.mode == "replace" and bool(user.any()):
            return user[0], self.tau
        scores = self.token_scores(x0_user, y_user, patch)
        if user is not None:
            user = user.expand(scores.shape[0], -1, -1)
        act, tau = spot.select_active(scores, self.tau, self.dilation, user, self.mode)
        return act.any(dim=0), tau  # one token set for the whole batch


@dataclass
class _Run:
    family: Family
    y_user: torch.Tensor
    y_model: torch.Tensor
    latent_hw: tuple
    n_img: int
    caches: dict = field(default_factory=dict)   # cond key -> {block: (K, V)} over [image | reference]
    x0: dict = field(default_factory=dict)       # cond key -> latest x0_hat (model space)
    last_settled: torch.Tensor | None = None     # token grid of the last selective step
    history: list = field(default_factory=list)  # (step, full, active token grid)
    last_step: int = -1


class SpotState:
    """Configuration plus the state of the last sampling run (shared by clones)."""

    def __init__(self, family: Family, n_blocks: int, selector: Selector, warmup: int, reset_every: int,
                 schedule: str):
        self.family, self.n_blocks, self.selector = family, n_blocks, selector
        self.warmup, self.reset_every, self.schedule = warmup, reset_every, schedule
        self.controller = TokenController(n_blocks, "flux" if family is FLUX else "qwen_image")
        self.run: _Run | None = None
        self.last: _Run | None = None
        self.base_model = None  # ComfyUI BaseModel: latent format conversions

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options
        return self

    # -- OUTER_SAMPLE --------------------------------------------------------------------
    def outer_sample(self, executor, *args, **kwargs):
        guider = executor.class_obj
        noise = args[0]
        y_user = _reference_latent(guider)
        lat_hw = tuple(noise.shape[-2:])
        if y_user is None:
            raise ValueError("SpotFusionSampler: the conditioning has no reference image; SpotEdit edits a "
                             "source image given through ReferenceLatent (FLUX.1 Kontext) or "
                             "TextEncodeQwenImageEdit (Qwen-Image-Edit)")
        if tuple(y_user.shape[-2:]) != lat_hw:
            raise ValueError(f"SpotFusionSampler: the reference latent is {y_user.shape[-1]}x{y_user.shape[-2]} but "
                             f"the output latent is {lat_hw[1]}x{lat_hw[0]}; SpotEdit needs the output at the "
                             f"source's size (scale both the same way, e.g. FluxKontextImageScale before "
                             f"encoding, and use the encoded source as the latent)")
        model = guider.model_patcher
        device = model.load_device
        y_model = model.model.process_latent_in(y_user.to(device, torch.float32))
        if y_model.ndim != noise.ndim:
            y_model = y_model.reshape(y_model.shape[0], *noise.shape[1:])
            y_user = y_user.reshape(y_user.shape[0], *noise.shape[1:])
        th, tw = -(-lat_hw[0] // self.family.patch), -(-lat_hw[1] // self.family.patch)
        self.run = _Run(self.family, y_user.float(), y_model.float(), lat_hw, th * tw)
        self.controller.install(guider.model_options)
        pe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, KEY, self.diffusion_model, guider.model_options,
                                is_model_options=True)
        try:
            out = executor(*args, **kwargs)
        finally:
            run, self.run, self.last = self.run, None, self.run
            self.controller.plan = None
        if run.last_settled is not None and bool(run.last_settled.any()):
            settled = expand_token_mask(run.last_settled.unsqueeze(0), self.family.patch, lat_hw)
            out = keep_background(run.y_user.to(out.device, out.dtype), out, settled)
        return out

    # -- DIFFUSION_MODEL -----------------------------------------------------------------
    def diffusion_model(self, executor, *args, **kwargs):
        run = self.run
        to = args[-1] if isinstance(args[-1], dict) else kwargs.get("transformer_options", {})
        if run is None or "sigmas" not in to:
            return executor(*args, **kwargs)
        x = args[0]
        sigma = float(to["sigmas"].flatten()[0])
        sample_sigmas = to.get("sample_sigmas")
        step = int((sample_sigmas.to(to["sigmas"].device).float() - sigma).abs().argmin()) \
            if sample_sigmas is not None else run.last_step + 1
        run.last_step = step
        key = (tuple(to.get("cond_or_uncond", [0])), x.shape[0])
        cache = run.caches.get(key)
        full = spot.is_full_step(step, self.warmup, self.reset_every) or cache is None or sigma <= 0
        active = None
        if not full:
            x0_prev = run.x0.get(key)
            x0_user = self._to_user(x0_prev[:1])
            active, _ = self.selector.active(x0_user, run.y_user, run.latent_hw, self.family.patch)
            active = active.to(x.device)
            if bool(active.all()):
                full = True  # nothing settled: a plain step
        if full:
            new_cache = {}

            def record(block, k, v):
                new_cache[block] = (k.clone(), v.clone())

            self.controller.plan = TokenPlan(n_img=run.n_img, record_all=True, record=record)
            try:
                out = executor(*args, **kwargs)
            finally:
                self.controller.plan = None
            if new_cache:
                run.caches[key] = new_cache
            run.history.append((step, True, None))
        else:
            flat = active.flatten()
            idx_active = flat.nonzero().flatten()
            idx_settled = (~flat).nonzero().flatten()
            a = spot.fusion_weight(sigma, self.schedule)
            n_img = run.n_img

            def cached(block, dev, dt):
                k, v = cache[block]
                ks, vs = k[:, :, idx_settled], v[:, :, idx_settled]
                if k.shape[2] >= 2 * n_img:  # the first reference covers the same grid
                    ks = spot.fuse(ks, k[:, :, n_img + idx_settled], a)
                    vs = spot.fuse(vs, v[:, :, n_img + idx_settled], a)
                return (torch.cat((ks, k[:, :, n_img:]), dim=2).to(dt),
                        torch.cat((vs, v[:, :, n_img:]), dim=2).to(dt))

            self.controller.plan = TokenPlan(n_img=n_img, keep=idx_active, keep_ref=False, cached=cached)
            try:
                out = executor(*args, **kwargs)
            finally:
                self.controller.plan = None
            settled = expand_token_mask((~active).unsqueeze(0), self.family.patch, run.latent_hw)
            v_settled = spot.settled_velocity(x.float(), run.y_model.to(x.device), sigma)
            out = keep_background(v_settled.to(out.dtype), out, settled)
            run.last_settled = ~active.cpu()
            run.history.append((step, False, active.cpu()))
        run.x0[key] = (x.float() - sigma * out.float()).detach()
        return out

    def _to_user(self, x0_model: torch.Tensor) -> torch.Tensor:
        return self.base_model.process_latent_out(x0_model)

    # -- reporting -----------------------------------------------------------------------
    def fractions(self) -> list[tuple[int, bool, float]]:
        """(step, full, fraction of image tokens computed) for every model call of the last run."""
        run = self.last
        if run is None:
            return []
        return [(s, full, 1.0 if full else float(a.float().mean())) for s, full, a in run.history]


def _reference_latent(guider) -> torch.Tensor | None:
    for cond in guider.conds.get("positive", []) or []:
        refs = cond.get("reference_latents")
        if refs:
            return refs[0]
    return None


def patch_model(model, family: Family, selector: Selector, warmup: int, reset_every: int, schedule: str):
    """A clone of ``model`` with SpotEdit installed; returns (clone, state)."""
    dm = model.model.diffusion_model
    n = len(dm.single_blocks) if family is FLUX else len(dm.transformer_blocks)
    state = SpotState(family, n, selector, warmup, reset_every, schedule)
    state.base_model = model.model
    clone = model.clone()
    clone.model_options["transformer_options"][KEY] = state
    clone.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, state.outer_sample)
    return clone, state


def state_of(model) -> SpotState | None:
    return model.model_options.get("transformer_options", {}).get(KEY)



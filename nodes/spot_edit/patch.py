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
from ..common import NodeInputError
from ..families import FLUX, Family
from ..flux_tokens import TokenController, TokenPlan
from .vae_features import UnsupportedVAE, authors_qwen_features, decoder_features, feature_path, load_vae

log = logging.getLogger("comfyui-precise-edit")
KEY = "precise_edit_spot"


MODES = ("paper", "authors code")
HEUN_LIKE = ("sample_heun", "sample_heunpp2")  # ComfyUI samplers whose second call is at the next step's sigma


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

    def describe(self) -> str:
        """The judge that runs, with its feature path (what the node and the preview show)."""
        if self.judge == "perceptual":
            try:
                return f"perceptual ({feature_path(self.vae)})"
            except UnsupportedVAE as e:
                return f"L4 (perceptual unavailable: {e})"
        return {"L4": "L4 (mean |difference|^4 over latent channels)",
                "cosine": "cosine (1 - token cosine similarity)"}[self.judge]

    def token_scores(self, x0_user: torch.Tensor, y_user: torch.Tensor, patch: int,
                     run: "_Run | None" = None) -> torch.Tensor:
        """Score per token (0 = identical). With a run, the reference's features are computed
        once per run and the VAE is loaded once per run (with the diffusion model). The
        reference arrives in the conditioning on the CPU; the clean estimate lives where the
        model runs."""
        y_user = y_user.to(x0_user.device)
        if self.judge == "perceptual":
            if self.vae is None:
                raise ValueError("the perceptual judge needs a VAE")
            try:
                if run is None:
                    fb = decoder_features(self.vae, y_user)
                    fa = decoder_features(self.vae, x0_user)
                else:
                    if not run.vae_loaded:
                        load_vae(self.vae, *([run.model_patcher] if run.model_patcher is not None else []))
                        run.vae_loaded = True
                    if run.ref_feats is None:
                        run.ref_feats = decoder_features(self.vae, y_user, load=False)
                    fb = run.ref_feats
                    fa = decoder_features(self.vae, x0_user, load=False)
            except UnsupportedVAE as e:
                msg = f"SpotSelector: {e}; using the L4 judge instead"
                if msg not in self.notes:
                    self.notes.append(msg)
                    log.warning(msg)
                if run is not None:
                    run.judge = f"L4 (perceptual unavailable: {e})"
                return spot.scores_l4(x0_user, y_user, patch)
            if fa[0].shape[0] != fb[0].shape[0]:
                fb = [f.expand(fa[0].shape[0], *f.shape[1:]) for f in fb]
            hw = spot.as_4d(x0_user).shape[-2:]
            return spot.scores_from_features(fa, fb, tuple(hw), patch)
        if self.judge == "L4":
            return spot.scores_l4(x0_user, y_user, patch)
        return spot.scores_cosine(x0_user, y_user, patch)

    def user_tokens(self, latent_hw, patch) -> torch.Tensor | None:
        if self.mask is None:
            return None
        return build_token_masks(self.mask, latent_hw, patch, allow_empty=True).tokens

    def active(self, x0_user, y_user, latent_hw, patch, run=None) -> tuple[torch.Tensor, float]:
        user = self.user_tokens(latent_hw, patch)
        if user is not None and self.mode == "replace" and bool(user.any()):
            return user[0], self.tau
        # the scores (one value per token) come to the host once; the selection runs there, so a
        # GPU run waits for the device once per selective step, not at every test of the selection
        scores = self.token_scores(x0_user, y_user, patch, run).cpu()
        if user is not None:
            user = user.cpu().expand(scores.shape[0], -1, -1)
        act, tau = spot.select_active(scores, self.tau, self.dilation, user, self.mode)
        return act.any(dim=0), tau  # one token set for the whole batch

    def authors_active(self, x0_model, y_model, x0_user, y_user, latent_hw, patch, run, qwen_format=None):
        """The authors' decision: reuse where score < tau (cosine: similarity > tau), scores of
        L4 / cosine in the model's latent space, their perceptual path (Qwen: their 16-frame
        broadcast); FLUX dilates the reused set, Qwen-Image the computed set. Returns active."""
        user = self.user_tokens(latent_hw, patch)
        if user is not None and self.mode == "replace" and bool(user.any()):
            return user[0]
        if self.judge == "L4":
            scores = spot.scores_l4(x0_model, y_model, patch)
        elif self.judge == "cosine":
            scores = 1 - spot.scores_cosine(x0_model, y_model, patch)
        elif qwen_format is not None:
            mean, std = qwen_format
            if not run.vae_loaded:
                load_vae(self.vae, *([run.model_patcher] if run.model_patcher is not None else []))
                run.vae_loaded = True
            if run.ref_feats is None:
                run.ref_feats = authors_qwen_features(self.vae, y_model, mean, std)
            fa = authors_qwen_features(self.vae, x0_model, mean, std)
            scores = spot.scores_from_features(fa, run.ref_feats, tuple(latent_hw), patch)
        else:
            scores = self.token_scores(x0_user, y_user, patch, run)
        scores = scores.cpu()  # one wait for the device; the decision runs on the host
        reuse = spot.authors_reuse(scores, self.tau, self.judge).all(dim=0)  # the authors: batch mean; B = 1
        if self.dilation > 0:
            if qwen_format is not None or run.family is not FLUX:
                reuse = ~spot.dilate((~reuse)[None], self.dilation)[0]
            else:
                reuse = spot.dilate(reuse[None], self.dilation)[0]
        active = ~reuse
        if user is not None:
            user = user.cpu()
        if user is not None and self.mode == "union":
            active = active | user[0].bool()
        elif user is not None and self.mode == "intersect":
            active = active & user[0].bool()
        return active


@dataclass
class _Run:
    family: Family
    y_user: torch.Tensor
    y_model: torch.Tensor
    latent_hw: tuple
    n_img: int
    model_patcher: object = None
    caches: dict = field(default_factory=dict)   # cond key -> {block: (K, V)} over [image | reference]
    x0: dict = field(default_factory=dict)       # cond key -> latest x0_hat (model space)
    velocity: dict = field(default_factory=dict)  # cond key -> latest velocity (authors code mode)
    frozen: dict = field(default_factory=dict)   # cond key -> selection kept until the next full step
    last_settled: torch.Tensor | None = None     # token grid of the last selective step
    history: list = field(default_factory=list)  # (step, full, active token grid)
    last_step: int = -1
    ref_rot: torch.Tensor | None = None          # rotation reference -> image position per image token
    ref_feats: list | None = None                # the reference's decoder features (once per run)
    vae_loaded: bool = False
    judge: str = ""
    full_steps: tuple | None = None              # authors code: (warm-up, resets) scaled to the run
    sigmas: list | None = None                   # the run's sigmas as Python floats (read once)
    leftover: float = 0.0                        # the run's last sigma when it ends with noise left
    stepped: int | None = None                   # the sampler's last per-step callback index (None: none yet)
    at_next: dict = field(default_factory=dict)  # cond key -> calls at the next step's sigma since that callback
    second_at_next: bool = False                 # the sampler calls the model again at the next sigma (heun)


class SpotState:
    """Configuration plus the state of the last sampling run (shared by clones)."""

    def __init__(self, family: Family, n_blocks: int, selector: Selector, warmup: int, reset_every: int,
                 schedule: str, mode: str = "paper"):
        self.family, self.n_blocks, self.selector = family, n_blocks, selector
        self.warmup, self.reset_every, self.schedule, self.mode = warmup, reset_every, schedule, mode
        self.controller = TokenController(n_blocks, "flux" if family is FLUX else "qwen_image")
        self.run: _Run | None = None
        self.last: _Run | None = None
        self.base_model = None  # ComfyUI BaseModel: latent format conversions

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options
        return self

    @property
    def authors(self) -> bool:
        return self.mode == "authors code"

    # -- OUTER_SAMPLE --------------------------------------------------------------------
    def outer_sample(self, executor, *args, **kwargs):
        guider = executor.class_obj
        noise = args[0]
        latent = args[1] if len(args) > 1 else kwargs.get("latent_image")
        y_user = _reference_latent(guider)
        lat_hw = tuple(noise.shape[-2:])
        node = "SpotFusionSampler"
        if y_user is None:
            raise NodeInputError(f"{node}: the conditioning has no reference image; SpotEdit edits a "
                                 f"source image given through ReferenceLatent (FLUX.1 Kontext) or "
                                 f"TextEncodeQwenImageEdit (Qwen-Image-Edit)")
        if tuple(y_user.shape[-2:]) != lat_hw:
            raise NodeInputError(f"{node}: the reference latent is {y_user.shape[-1]}x{y_user.shape[-2]} but "
                                 f"the output latent is {lat_hw[1]}x{lat_hw[0]}; SpotEdit needs the output at the "
                                 f"source's size (scale both the same way, e.g. FluxKontextImageScale before "
                                 f"encoding, and use the encoded source as the latent)")
        if not bool(torch.isfinite(y_user).all()):
            raise NodeInputError(f"{node}: the reference latent holds NaN or infinite values; re-encode the "
                                 f"source image (VAE Encode) and connect it to ReferenceLatent")
        if latent is not None and torch.is_tensor(latent) and not bool(torch.isfinite(latent).all()):
            raise NodeInputError(f"{node}: the latent to sample holds NaN or infinite values; connect a finite "
                                 f"latent (e.g. the encoded source image)")
        model = guider.model_patcher
        device = model.load_device
        y_model = model.model.process_latent_in(y_user.to(device, torch.float32))
        if y_model.ndim != noise.ndim:
            y_model = y_model.reshape(y_model.shape[0], *noise.shape[1:])
            y_user = y_user.reshape(y_user.shape[0], *noise.shape[1:])
        th, tw = -(-lat_hw[0] // self.family.patch), -(-lat_hw[1] // self.family.patch)
        self.run = _Run(self.family, y_user.float(), y_model.float(), lat_hw, th * tw, model_patcher=model,
                        judge=self.selector.describe())
        sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
        if torch.is_tensor(sigmas) and sigmas.numel():
            self.run.leftover = float(sigmas.flatten()[-1])
        self.controller.install(guider.model_options)
        pe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, KEY, self.diffusion_model, guider.model_options,
                                is_model_options=True)
        try:
            out = executor(*args, **kwargs)
        finally:
            run, self.run, self.last = self.run, None, self.run
            self.controller.plan = None
        # a run that ends with noise left (KSamplerAdvanced's end_at_step, SplitSigmas) hands a noisy
        # latent to the next stage: pasting the clean source there would strip its noise
        if run.last_settled is not None and bool(run.last_settled.any()) and run.leftover <= 0:
            settled = expand_token_mask(run.last_settled.unsqueeze(0), self.family.patch, lat_hw)
            out = keep_background(run.y_user.to(out.device, out.dtype), out, settled)
        return out

    # -- step plan -----------------------------------------------------------------------
    def _is_full(self, run: _Run, step: int, sample_sigmas) -> bool:
        if not self.authors:
            return spot.is_full_step(step, self.warmup, self.reset_every)
        if run.full_steps is None:
            n = len(sample_sigmas) - 1 if sample_sigmas is not None else spot.AUTHORS_STEPS
            run.full_steps = spot.authors_full_steps(n)
        warm, resets = run.full_steps
        return step < warm or step in resets

    def _reference_rotation(self, run: _Run, device) -> torch.Tensor | None:
        """Per image token, the rotation that moves the reference token's key (recorded after
        RoPE at the reference position) to the image token's position."""
        if run.ref_rot is not None:
            return run.ref_rot
        n = run.n_img
        if self.family is FLUX:
            ids = self.controller.last_img_ids
            if ids is None or ids.shape[1] < 2 * n:
                return None
            emb = self.base_model.diffusion_model.pe_embedder
            rot_img, rot_ref = emb(ids[:, :n].float()), emb(ids[:, n:2 * n].float())
        else:
            pe_all = self.controller.last_img_pe
            if pe_all is None or pe_all.shape[2] < 2 * n:
                return None
            rot_img, rot_ref = pe_all[:, :, :n], pe_all[:, :, n:2 * n]
        run.ref_rot = spot.rotation_between(rot_img[:1].float(), rot_ref[:1].float()).to(device)
        return run.ref_rot

    @staticmethod
    def _step_of(run: _Run, key, sigma: float) -> int:
        """The step a model call belongs to. A step's later calls (dpm_2's and dpmpp_sde's midpoints)
        lie below its sigma and above the next one's: the last schedule sigma at or above the call's.
        heun's second call lands exactly on the next step's sigma, where that step's first call
        lands too: ComfyUI's samplers call back once per step, right after the step's first call, and
        after that callback the first call at the next sigma is the step's own second call when the
        sampler is heun-like (known by name, or seen making two calls there in an earlier step)."""
        s = run.sigmas
        tol = 1e-6 * max(1.0, abs(sigma))
        step = max((i for i in range(len(s)) if s[i] >= sigma - tol), default=0)
        c = run.stepped
        if c is None or abs(s[step] - sigma) > tol:
            return step
        if step == c + 1:
            n = run.at_next.get(key, 0) + 1
            run.at_next[key] = n
            if n == 2:
                run.second_at_next = True
            elif n == 1 and run.second_at_next:
                return c
        elif step == c + 2 and run.second_at_next and run.at_next.get(key, 0) == 1:
            return c  # heunpp2's third call, two sigmas on
        return step

    def sampler_sample(self, executor, *args, **kwargs):
        """SAMPLER_SAMPLE wrapper: follow the sampler's steps through its per-step callback (passed on
        to the caller's), so that a step's calls are told from the next step's (see _step_of)."""
        run = self.run
        if run is None or len(args) < 4:
            return executor(*args, **kwargs)
        fn = getattr(executor.class_obj, "sampler_function", None)
        run.second_at_next = getattr(fn, "__name__", "") in HEUN_LIKE
        user = args[3]

        def callback(i, *a, **kw):
            run.stepped, run.at_next = int(i), {}
            if user is not None:
                return user(i, *a, **kw)

        return executor(*args[:3], callback, *args[4:], **kwargs)

    @staticmethod
    def _judged_x0(run: _Run, key) -> torch.Tensor:
        """The clean estimate the judge compares with the source: the conditional (instruction)
        part of this call's batch, as the authors' pipelines judge their one, conditional,
        prediction. ComfyUI batches the negative first (``cond_or_uncond`` [1, 0]); its estimate
        keeps the source where the edit has not formed, so judging it settles the edit. (The
        guided estimate is no better a judge: at cfg 6 it moves every token of the synthetic
        model far from the source, and nothing settles.) Every image of a latent batch is
        judged: the selection is one token set for the whole batch, so a token stays computed
        while any image still changes it."""
        x0 = run.x0[key]
        parts = key[0]
        chunk = x0.shape[0] // max(1, len(parts))
        i = parts.index(0) if 0 in parts else 0   # 0: ComfyUI's COND
        return x0[i * chunk:(i + 1) * chunk]

    def _select(self, run: _Run, key, x) -> torch.Tensor:
        x0_prev = self._judged_x0(run, key)
        x0_user = self._to_user(x0_prev)
        sel = self.selector
        if not self.authors:
            return sel.active(x0_user, run.y_user, run.latent_hw, self.family.patch, run)[0]
        if self.family is not FLUX and key in run.frozen:  # Qwen-Image: kept until the next full step
            return run.frozen[key]
        qwen = None
        if self.family is not FLUX and sel.judge == "perceptual" and sel.vae is not None:
            lf = self.base_model.latent_format
            qwen = (lf.latents_mean.flatten(), lf.latents_std.flatten())
        active = sel.authors_active(x0_prev, run.y_model.to(x0_prev.device), x0_user, run.y_user, run.latent_hw,
                                    self.family.patch, run, qwen)
        if self.family is not FLUX:
            run.frozen[key] = active
        return active

    # -- DIFFUSION_MODEL -----------------------------------------------------------------
    def diffusion_model(self, executor, *args, **kwargs):
        run = self.run
        to = args[-1] if isinstance(args[-1], dict) else kwargs.get("transformer_options", {})
        if run is None or "sigmas" not in to:
            return executor(*args, **kwargs)
        x = args[0]
        sigma = float(to["sigmas"].flatten()[0])  # the step's one wait for the device (a full step's only one)
        sample_sigmas = to.get("sample_sigmas")
        key = (tuple(to.get("cond_or_uncond", [0])), x.shape[0])
        if sample_sigmas is not None:
            if run.sigmas is None:  # once per run, then the step index is found on the host
                run.sigmas = [float(s) for s in sample_sigmas.float().flatten().tolist()]
            step = self._step_of(run, key, sigma)
        else:
            step = run.last_step + 1
        run.last_step = step
        cache = run.caches.get(key)
        full = self._is_full(run, step, sample_sigmas) or cache is None or sigma <= 0 or key not in run.x0
        active = None
        if full:
            run.frozen.pop(key, None)
        else:
            active = self._select(run, key, x).cpu()  # a host tensor (selected there): no wait
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
                self._reference_rotation(run, x.device)
            run.history.append((step, True, None))
        elif not bool(active.any()):
            # authors code, every token judged reusable: each keeps its previous prediction (their
            # settled-token update), so there is nothing for the model to compute
            out = run.velocity[key].to(x.device).clone()
            run.last_settled = torch.ones_like(active)
            run.history.append((step, False, active))
        else:
            out = self._selective(run, key, cache, active, sigma, x, executor, args, kwargs)
            run.history.append((step, False, active))
        run.x0[key] = (x.float() - sigma * out.float()).detach()
        if self.authors:
            run.velocity[key] = out.detach()
        return out

    def _selective(self, run, key, cache, active, sigma, x, executor, args, kwargs):
        flat = active.flatten()  # on the host: the indices cost no wait for the device
        idx_active = flat.nonzero().flatten().to(x.device, non_blocking=True)
        idx_settled = (~flat).nonzero().flatten().to(x.device, non_blocking=True)
        a = spot.authors_fusion_weight(sigma) if self.authors else spot.fusion_weight(sigma, self.schedule)
        n_img = run.n_img
        rot = run.ref_rot
        authors = self.authors
        # once per step for every block: one gather takes a settled token's cached and reference
        # keys together; the rotation to the image position comes pre-scaled by 1 - a
        ns = idx_settled.numel()
        both = torch.cat((idx_settled, n_img + idx_settled))
        scaled = spot.scaled_rotation(rot[:, :, idx_settled.to(rot.device)], a) \
            if rot is not None and a != 1.0 else None

        def record(block, k, v):  # authors code: the cache keeps every token's latest keys/values
            ck, cv = cache[block]
            ck[:, :, idx_active] = k.to(ck.dtype)
            cv[:, :, idx_active] = v.to(cv.dtype)

        def cached(block, dev, dt):
            k, v = cache[block]
            if k.shape[2] >= 2 * n_img and a != 1.0:  # the first reference covers the same grid
                gk, gv = k.index_select(2, both), v.index_select(2, both)
                ks = spot.fuse_key_scaled(gk[:, :, :ns], gk[:, :, ns:], scaled, a) if scaled is not None \
                    else spot.fuse(gk[:, :, :ns], gk[:, :, ns:], a)
                vs = spot.fuse(gv[:, :, :ns], gv[:, :, ns:], a)  # values carry no position
            else:
                ks, vs = k.index_select(2, idx_settled), v.index_select(2, idx_settled)
            # [settled | reference], appended to the computed tokens in one concatenation
            return (ks, k[:, :, n_img:]), (vs, v[:, :, n_img:])

        self.controller.plan = TokenPlan(n_img=n_img, keep=idx_active, keep_ref=False, cached=cached,
                                         record_all=authors, record=record if authors else None)
        try:
            out = executor(*args, **kwargs)
        finally:
            self.controller.plan = None
        settled = expand_token_mask((~active).unsqueeze(0), self.family.patch, run.latent_hw)
        if authors:  # their settled tokens keep the previous step's prediction
            v_settled = run.velocity[key].to(out.device, out.dtype)
        else:  # the pack: a velocity whose clean estimate is exactly the reference
            v_settled = spot.settled_velocity(x.float(), run.y_model.to(x.device), sigma)
        out = keep_background(v_settled.to(out.dtype), out, settled)
        run.last_settled = ~active
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

    def describe(self) -> str:
        if self.authors:
            return ("authors code: their full steps (0-3, 13, 22, 31 of 50, scaled to the step count), "
                    "their cache (a = cos^2(pi/2 * sigma/1000), latest keys of every token), settled tokens "
                    "keep the previous step's velocity" + ("; Qwen-Image: selection kept until the next full "
                                                           "step" if self.family is not FLUX else ""))
        return (f"paper: warm-up {self.warmup}, a full step every {self.reset_every} steps, "
                f"{self.schedule} fusion, settled tokens land on the source")


def _reference_latent(guider) -> torch.Tensor | None:
    for cond in guider.conds.get("positive", []) or []:
        refs = cond.get("reference_latents")
        if refs:
            return refs[0]
    return None


def patch_model(model, family: Family, selector: Selector, warmup: int, reset_every: int, schedule: str,
                mode: str = "paper"):
    """A clone of ``model`` with SpotEdit installed; returns (clone, state)."""
    dm = model.model.diffusion_model
    n = len(dm.single_blocks) if family is FLUX else len(dm.transformer_blocks)
    state = SpotState(family, n, selector, warmup, reset_every, schedule, mode)
    state.base_model = model.model
    clone = model.clone()
    clone.model_options["transformer_options"][KEY] = state
    clone.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, state.outer_sample)
    clone.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, KEY, state.sampler_sample)
    return clone, state


def state_of(model) -> SpotState | None:
    return model.model_options.get("transformer_options", {}).get(KEY)



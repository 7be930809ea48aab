"""KV-Edit on ComfyUI's FLUX: inversion with background recording, and denoising that
computes only the foreground tokens (``shared/methods/kv-edit.md``).

Model evaluations go through ComfyUI's own guider (conditioning, FluxGuidance, Kontext
reference latents, model patches and LoRAs all apply as in a normal sampler); the loops
are plain Python here because ComfyUI's samplers cannot run an inversion to sigma 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils

from ...kernels.kv_attention import euler, keep_background
from ...kernels.kv_record import BackgroundRecord, DiskRecordSink, mask_digest, sigmas_digest
from ...kernels.kv_store import KVStore
from ...kernels.token_mask import TokenMasks
from ..flux_tokens import TokenController, TokenPlan, VelocityProbe
from .fingerprint import FingerprintError, model_fingerprint  # noqa: F401 (re-exported)


def default_sigmas(model, steps: int) -> torch.Tensor:
    ms = model.get_model_object("model_sampling")
    return comfy.samplers.calculate_sigmas(ms, "simple", steps).float().cpu()


def flux_geometry(model) -> dict:
    dm = model.model.diffusion_model
    blocks = [("double", i) for i in range(len(dm.double_blocks))] + \
             [("single", i) for i in range(len(dm.single_blocks))]
    return {"blocks": blocks, "heads": dm.num_heads, "hidden": dm.hidden_size,
            "head_dim": dm.hidden_size // dm.num_heads, "n_single": len(dm.single_blocks)}


class LoopSampler(comfy.samplers.Sampler):
    """A ComfyUI ``SAMPLER`` whose loop is a plain function; usable with SamplerCustomAdvanced."""

    def __init__(self, loop):
        self.loop = loop

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        return self.loop(model_wrap, sigmas, extra_args, callback, noise, latent_image)


def _guider(model, positive):
    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({"positive": positive})
    guider.set_cfg(1.0)
    return guider


def _interrupted():
    comfy.model_management.throw_exception_if_processing_interrupted()


@dataclass
class InvertResult:
    record: BackgroundRecord
    inverted: torch.Tensor  # user space latent at s_record_from (s_0 when every step is recorded)


@torch.no_grad()
def invert(model, latent: torch.Tensor, masks: TokenMasks, positive, sigmas: torch.Tensor,
           storage: str = "bf16", cache_device="cpu", mask_guided: bool = False, record_from: int = 0,
           all_tokens: bool = False, mask_resize: str = "touched", fingerprint: str | None = None,
           progress: comfy.utils.ProgressBar | None = None, record_path: str | None = None,
           depth: int = 4, base: BackgroundRecord | None = None) -> InvertResult:
    """Euler inversion from the source latent to ``s_0`` recording background keys/values
    of every interval ``i >= record_from`` (``z_i = z_{i+1} + (s_i - s_{i+1}) v(z_{i+1}, s_{i+1})``).
    ``all_tokens`` records every image token instead, so any mask can be painted later.
    Steps below ``record_from`` are not run (no edit reads them): the inverted latent returned
    is then the one at ``s_record_from``, and those trajectory rows stay zero.

    With ``record_path`` the keys/values go to that file as they are recorded (at most
    ``depth`` entries queued) and the returned record streams from it. ``base`` is the
    :func:`empty_record` of these inputs when the caller already made it (its ``all_tokens``
    must match)."""
    if base is None:
        base = empty_record(model, latent, masks, sigmas, storage, cache_device, mask_guided,
                            all_tokens=all_tokens, mask_resize=mask_resize, fingerprint=fingerprint)
    if bool(base.all_tokens) != bool(all_tokens):
        raise ValueError("invert(): base record and all_tokens disagree")
    n = base.steps
    flat = masks.flat[0]
    bg_idx = base.recorded_tokens
    sink = None
    if record_path is not None:
        steps = list(range(record_from, n)) if bg_idx.numel() else []
        sink = DiskRecordSink(record_path, base, steps, depth=depth).open()
    put = sink.put if sink is not None else base.store.put
    geo = flux_geometry(model)
    controller = TokenController(geo["n_single"], "flux")
    probe = VelocityProbe()
    traj: list[torch.Tensor | None] = [None] * (n + 1)
    # an edit starts at z_skip with skip >= record_from and reads z_skip .. z_n only: the steps
    # below record_from are not computed (the authors' inversion also stops at its skip step)
    stop = record_from if bg_idx.numel() else 0

    def loop(model_wrap, sig, extra_args, callback, noise, x0):
        mo = extra_args["model_options"]
        controller.install(mo)
        probe.install(mo)
        traj[n] = x0.float()
        s_in = x0.new_ones(x0.shape[0])
        for i in reversed(range(stop, n)):
            _interrupted()
            step = i

            def record(block, k, v, step=step):
                put(step, block, k, v)

            rec_now = bool(bg_idx.numel()) and i >= record_from
            controller.plan = TokenPlan(n_img=flat.numel(), record_idx=bg_idx if rec_now else None,
                                        record=record if rec_now else None,
                                        guided_fg=flat if mask_guided else None)
            model_wrap(traj[i + 1].to(x0.dtype), sig[i + 1] * s_in, **extra_args)
            v = probe.take()
            traj[i] = euler(traj[i + 1], v, float(sig[i + 1]), float(sig[i]))
            traj[i + 1] = traj[i + 1].cpu()
            controller.plan = None
            if progress is not None:
                progress.update(1)
        for i in range(stop):
            traj[i] = torch.zeros_like(traj[stop])  # never read: edits start at or after record_from
        return traj[stop].to(x0.dtype)

    guider = _guider(model, positive)
    try:
        inverted = guider.sample(torch.zeros_like(latent), latent, LoopSampler(loop), sigmas.to(latent.device),
                                 seed=0, disable_pbar=True)
        trajectory = torch.stack([t.cpu() for t in traj])
        if sink is not None:
            record = sink.finish(trajectory, depth=depth)
        else:
            base.trajectory = trajectory
            record = base
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    return InvertResult(record, inverted.cpu())


def empty_record(model, latent: torch.Tensor, masks: TokenMasks, sigmas: torch.Tensor, storage: str = "bf16",
                 cache_device="cpu", mask_guided: bool = False, all_tokens: bool = False,
                 mask_resize: str = "touched", fingerprint: str | None = None) -> BackgroundRecord:
    """The record an inversion will fill: fingerprint, masks, key/value shape; no entries yet
    (the trajectory is zero until the inversion sets it). ``all_tokens`` stores every image
    token (not only the background), so any mask can be painted for the edit."""
    geo = flux_geometry(model)
    n = int(sigmas.numel()) - 1
    bg = int(masks.flat[0].numel()) if all_tokens else int((~masks.flat[0]).sum())
    fingerprint = {"model": fingerprint or model_fingerprint(model), "latent_shape": list(latent.shape),
                   "mask": mask_digest(masks.latent), "steps": n, "sigmas": sigmas_digest(sigmas)}
    return BackgroundRecord(store=KVStore(storage=storage, device=cache_device),
                            trajectory=torch.zeros((n + 1, *latent.shape), dtype=torch.float32),
                            source_latent=latent.clone().cpu(), latent_mask=masks.latent.cpu(),
                            token_mask=masks.tokens.cpu(), sigmas=sigmas.float().cpu(), fingerprint=fingerprint,
                            kv_shape=(1, geo["heads"], bg, geo["head_dim"]), blocks=geo["blocks"],
                            mask_guided=mask_guided, all_tokens=all_tokens,
                            info={"hidden": geo["hidden"], "family": "flux", "mask_resize": mask_resize})


REINIT_FORMS = ("inverted", "clean")


def edit_mask_positions(record: BackgroundRecord, token_mask: torch.Tensor) -> torch.Tensor | None:
    """Positions, inside the record's stored tokens, of the background tokens of an edit mask
    (``None`` when they are exactly the stored tokens). Raises ``ValueError`` when the
    edit's background holds a token the record did not store."""
    stored = record.recorded_tokens
    bg = (~token_mask.reshape(token_mask.shape[0], -1)[0]).nonzero().flatten()
    if torch.equal(stored, bg):
        return None
    pos = torch.searchsorted(stored, bg)
    if bg.numel() and (int(pos.max()) >= stored.numel() or not torch.equal(stored[pos], bg)):
        raise ValueError("the mask keeps tokens the record did not store")
    return pos


def denoise_loop(record: BackgroundRecord, skip: int, attn_scale: float = 0.0, reinit: bool = False,
                 authors_mode: bool = False, progress: comfy.utils.ProgressBar | None = None,
                 masks: TokenMasks | None = None, reinit_from: str = "inverted"):
    """The SAMPLER loop of KV-Edit's denoising (paper form by default).

    ``noise`` (from ComfyUI's NOISE input) is used only by reinitialisation: ``inverted``
    (the paper) mixes it with the inverted latent ``z_k``, ``clean`` (the authors' code) with
    the clean source latent, both by ``s_k``. ``masks`` edits another region than the
    record's own (its background must lie in the record's stored tokens). Returns the final
    latent in model space; the caller pastes the exact source background with :func:`composite`.
    """
    if reinit_from not in REINIT_FORMS:
        raise ValueError(f"reinit_from must be one of {REINIT_FORMS}")
    n = record.steps
    token_mask = masks.tokens if masks is not None else record.token_mask
    latent_mask = masks.latent if masks is not None else record.latent_mask
    flat = token_mask.reshape(token_mask.shape[0], -1)[0]
    fg_idx = flat.nonzero().flatten()
    all_fg = bool(flat.all())
    positions = None if all_fg else edit_mask_positions(record, token_mask)

    def loop(model_wrap, sig, extra_args, callback, noise, latent_image):
        s = record.sigmas
        device = latent_image.device
        dtype = latent_image.dtype
        traj = record.trajectory.to(device)
        m = latent_mask.to(device)
        dm = model_wrap.inner_model.diffusion_model
        controller = TokenController(len(dm.single_blocks), "flux")
        controller.install(extra_args["model_options"])
        start = skip + 1 if authors_mode else skip
        x = traj[min(start, n)].clone()
        if reinit:
            sk = float(s[skip])
            base = traj[n] if reinit_from == "clean" else traj[skip]
            fresh = sk * noise.to(device).float() + (1 - sk) * base
            x = keep_background(fresh, x, m)
        pos = positions.to(device) if positions is not None else None

        def cached(block, dev, dt, step):
            k, v = record.store.get(step, block, dev, dt)
            if pos is not None:
                k, v = k.index_select(2, pos.to(k.device)), v.index_select(2, pos.to(v.device))
            return k, v

        begin = getattr(record.store, "begin", None)
        if begin is not None:
            begin()  # a streamed record: its file is still there, unchanged
        try:
            return run(x, s, device, dtype, traj, m, controller, cached, model_wrap, extra_args, callback)
        finally:
            record.store.release()  # copies in flight and the disk reader

    def run(x, s, device, dtype, traj, m, controller, cached, model_wrap, extra_args, callback):
        s_in = x.new_ones(x.shape[0])
        for i in range(skip, n):
            _interrupted()
            if authors_mode:
                x = keep_background(x, traj[i + 1], m)
            controller.plan = None if all_fg else TokenPlan(
                n_img=flat.numel(), keep=fg_idx,
                cached=lambda block, dev, dt, step=i: cached(block, dev, dt, step), cached_bias=attn_scale)
            si, sn = float(s[i]), float(s[i + 1])
            denoised = model_wrap(x.to(dtype), s[i].to(device) * s_in, **extra_args).float()
            v = (x - denoised) / si
            x = euler(x, v, si, sn)
            if not authors_mode:
                x = keep_background(x, traj[i + 1], m)
            controller.plan = None
            if callback is not None:
                callback(i - skip, denoised, x, n - skip)
            if progress is not None:
                progress.update(1)
        return x.to(dtype)

    return loop


def composite(samples: torch.Tensor, record: BackgroundRecord, latent_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The edit's result: the source latent, bit-exact, wherever the latent mask is 0."""
    m = record.latent_mask if latent_mask is None else latent_mask.cpu()
    return keep_background(samples.to(record.source_latent.dtype).cpu(), record.source_latent, m)


@torch.no_grad()
def edit(model, record: BackgroundRecord, positive, skip: int, seed: int = 0, attn_scale: float = 0.0,
         reinit: bool = False, authors_mode: bool = False, noise: torch.Tensor | None = None,
         progress: comfy.utils.ProgressBar | None = None, masks: TokenMasks | None = None,
         reinit_from: str = "inverted") -> torch.Tensor:
    """Denoise with the record and return the user-space latent (background bit-exact).
    ``masks``: another edit region served by the same record (see :func:`denoise_loop`)."""
    latent = record.source_latent
    if noise is None:
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(latent.shape, generator=gen, dtype=torch.float32)
    guider = _guider(model, positive)
    loop = denoise_loop(record, skip, attn_scale, reinit, authors_mode, progress, masks=masks,
                        reinit_from=reinit_from)
    out = guider.sample(noise, latent.clone(), LoopSampler(loop), record.sigmas[skip:].clone(),
                        seed=seed, disable_pbar=True)
    return composite(out, record, None if masks is None else masks.latent)


@torch.no_grad()
def inversion_free(model, latent: torch.Tensor, masks: TokenMasks, source, target, sigmas: torch.Tensor,
                   skip: int = 0, seed: int = 0, attn_scale: float = 0.0, storage: str = "bf16",
                   cache_device="cpu", noise: torch.Tensor | None = None, mask_guided: bool = False,
                   progress: comfy.utils.ProgressBar | None = None) -> tuple[torch.Tensor, KVStore]:
    """KV-Edit without inversion: keys/values of one step only, so memory does not grow
    with the number of steps. Two evaluations per step (source on all tokens, target on the
    foreground). ``mask_guided`` masks the source evaluation's attention as mask-guided
    inversion does (the authors' inversion-free demo offers it). Returns the user-space
    latent (background bit-exact) and the store, whose ``peak_bytes`` is the most it ever held."""
    geo = flux_geometry(model)
    n = int(sigmas.numel()) - 1
    flat = masks.flat[0]
    bg_idx = (~flat).nonzero().flatten()
    fg_idx = flat.nonzero().flatten()
    all_fg = bool(flat.all())
    store = KVStore(storage=storage, device=cache_device)
    if noise is None:
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(int(seed)))

    def loop(model_wrap, sig, extra_args, callback, noise_in, x0):
        mo = extra_args["model_options"]
        controller = TokenController(geo["n_single"], "flux")
        controller.install(mo)
        device = x0.device
        m = masks.latent.to(device)
        e = noise_in.to(device).float()
        x0f = x0.float()
        z_fe = x0f.clone()
        s_in = x0.new_ones(x0.shape[0])
        source_conds = model_wrap.conds["negative"]
        for i in range(skip, n):
            _interrupted()
            si, sn = float(sigmas[i]), float(sigmas[i + 1])
            z_src = (1 - si) * x0f + si * e
            z_tar = z_src + (z_fe - x0f)
            t = sigmas[i].to(device) * s_in

            def record(block, k, v, step=i):
                store.put(step, block, k, v)

            controller.plan = TokenPlan(n_img=flat.numel(), record_idx=bg_idx if not all_fg else None,
                                        record=None if all_fg else record,
                                        guided_fg=flat if mask_guided and not all_fg else None)
            d_src = comfy.samplers.calc_cond_batch(model_wrap.inner_model, [source_conds], z_src.to(x0.dtype),
                                                   t, mo)[0].float()
            controller.plan = None if all_fg else TokenPlan(
                n_img=flat.numel(), keep=fg_idx, cached_bias=attn_scale,
                cached=lambda block, dev, dt, step=i: store.get(step, block, dev, dt))
            d_tar = model_wrap(z_tar.to(x0.dtype), t, **extra_args).float()
            controller.plan = None
            v_src = (z_src - d_src) / si
            v_tar = (z_tar - d_tar) / si
            z_fe = keep_background(z_fe + (sn - si) * (v_tar - v_src), z_fe, m)
            store.drop_step(i)
            if progress is not None:
                progress.update(1)
        return z_fe.to(x0.dtype)

    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({"positive": target, "negative": source})
    guider.set_cfg(1.0)
    out = guider.sample(noise, latent.clone(), LoopSampler(loop), sigmas[skip:].clone(), seed=seed,
                        disable_pbar=True)
    result = keep_background(out.to(latent.dtype).cpu(), latent.cpu(), masks.latent.cpu())
    return result, store

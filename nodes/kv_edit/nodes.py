"""KV-Edit nodes: invert once, edit many times, background bit-exact."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import io

import comfy.utils

from ...kernels.kv_disk import DiskRecordError
from ...kernels.surgery import inner_feather
from ...kernels.token_mask import RESIZE_MODES
from . import checks as ck
from . import engine as ke
from . import place as kp
from .checks import DEVICE_CHOICES, MODES, RECORD_TOKENS, REINIT_FROM, STORAGE_CHOICES
from .record_nodes import (KV_CATEGORY, KV_SUBFOLDER, PREFIX_MAX, BackgroundKV,  # noqa: F401 (re-exported)
                           BackgroundKVCache, LoadBackgroundKV, _kv_files, _startup_cleanup, clean_partial_saves)
from ..common import NodeInputError, note


class KVInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KVInvert", display_name="KV-Edit Invert", category=KV_CATEGORY,
            description=("Inverts the source latent to noise with the source prompt (Euler, one model call per "
                         "step) and records, at every step and block, the attention keys/values of the "
                         "background tokens (outside the mask). Invert once, then edit with many prompts, "
                         "seeds and skip counts. FLUX.1 dev / schnell / Kontext."),
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1 model (your own checkpoint, LoRAs, fp8 and GGUF work)."),
                io.Latent.Input("latent", tooltip="The source image's latent (VAE Encode), one image."),
                io.Mask.Input("mask", tooltip="Region to edit: 1 (white) = regenerate, 0 = keep bit-exact."),
                io.Conditioning.Input("conditioning", tooltip="Source prompt describing the original image "
                                                              "(FLUX-dev: guidance 1.5 via FluxGuidance)."),
                io.Int.Input("steps", default=28, min=1, max=200, tooltip="Steps of the schedule; the edit "
                                                                            "uses the same schedule."),
                io.Boolean.Input("mask_guided", default=False, tooltip="Mask the attention during inversion "
                                 "so the background record does not depend on the foreground content."),
                io.Combo.Input("storage", options=STORAGE_CHOICES, default="bf16",
                               tooltip="Storage type of the keys/values: bf16 (default), fp16, fp32, fp8 "
                                       "with a per-tensor scale (half the size of bf16), or int4 / int2 "
                                       "(KIVI-style groups, about a quarter / an eighth of bf16)."),
                io.Combo.Input("cache_device", options=kp.PLACES, default="auto",
                               tooltip="Where the record lives: auto (CPU memory when it fits in "
                                       "memory_limit_gb, else disk), CPU memory (moved block by block while "
                                       "editing), the compute device (fastest, uses VRAM), or disk (written "
                                       "while inverting, streamed block by block while editing)."),
                io.Int.Input("record_from_step", default=0, min=0, max=199,
                             tooltip="The smallest skip_steps you will edit with: earlier steps are neither "
                                     "inverted nor recorded, which shrinks the record and shortens the "
                                     "inversion (0 = every step)."),
                io.Combo.Input("mask_resize", options=list(RESIZE_MODES), default="touched",
                               tooltip="Pixel mask to latent pixels: touched (bilinear, plus every latent pixel "
                                       "a brush stroke touches) or bilinear (exactly as the authors' code, for "
                                       "comparisons with 'authors code' mode)."),
                io.Float.Input("memory_limit_gb", default=0.0, min=0.0, max=4096.0, step=0.5,
                               tooltip="RAM the record may use (GiB); auto puts larger records on disk. "
                                       "0 = free RAM minus a safety margin (15% of RAM, at least 4 GiB)."),
                io.String.Input("record_folder", default="", tooltip="Folder of records on disk; empty = "
                                "ComfyUI's temp folder (emptied when ComfyUI starts). Needs the record's size "
                                "free (shown on the node)."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="Optional schedule (replaces steps), e.g. "
                                "from BasicScheduler; must fall to 0."),
                io.Combo.Input("record_tokens", options=RECORD_TOKENS, default="background", optional=True,
                               tooltip="background: keys/values of the tokens outside the mask (smallest); the "
                                       "edit may use this mask or a larger one. every image token: invert once "
                                       "and repaint the mask freely for each edit (costs total/background "
                                       "tokens times more; shown on the node). Needs mask_guided off."),
            ],
            outputs=[
                BackgroundKV.Output("background_kv", tooltip="The background record for KV-Edit samplers."),
                io.Latent.Output("inverted", tooltip="The inverted latent at the first recorded step (the first sigma when "
                                                            "record_from_step is 0)."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, mask, conditioning, steps, mask_guided, storage, cache_device,
                record_from_step=0, mask_resize="touched", memory_limit_gb=0.0, record_folder="",
                sigmas=None, record_tokens="background") -> io.NodeOutput:
        node = "KVInvert"
        ck.flux_model(model, node)
        ck.choice(node, "storage", storage, STORAGE_CHOICES)
        ck.choice(node, "cache_device", cache_device, DEVICE_CHOICES)
        ck.choice(node, "record_tokens", record_tokens, RECORD_TOKENS)
        all_tokens = record_tokens == "every image token"
        if all_tokens and mask_guided:
            raise NodeInputError(f"{node}: mask_guided inversion depends on the mask, so its record cannot serve "
                                 f"other masks; turn mask_guided off or record only the background")
        x = ck.source(latent, node)
        ck.conditioning(node, conditioning, "the source prompt", single=True)
        notes = []
        masks = ck.masks(mask, x, node, mask_resize, notes)
        s = ck.sigmas(model, steps, sigmas, node)
        if record_from_step >= int(s.numel()) - 1:
            raise NodeInputError(f"{node}: record_from_step must be below the step count ({int(s.numel()) - 1})")
        if bool(masks.tokens.all()):
            notes.append(note(node, "the mask covers every token: nothing to keep, the edit is a plain "
                                    "generation from the inverted latent"))
        limit = ck.finite_number(node, "memory_limit_gb", memory_limit_gb)
        if limit < 0:
            raise NodeInputError(f"{node}: memory_limit_gb must be 0 (automatic) or more (got {limit:g})")
        fp = ck.fingerprint(model, node)  # an unreadable model is refused before the long inversion
        base = ke.empty_record(model, x, masks, s, storage, mask_guided=mask_guided, all_tokens=all_tokens,
                               mask_resize=mask_resize, fingerprint=fp)
        need, entry = kp.record_need(base, base.steps - record_from_step)
        where = kp.choose(node, cache_device, need, entry, limit)
        pbar = comfy.utils.ProgressBar(int(s.numel()) - 1)
        path = None
        if where.place == "disk":
            path = kp.new_record_path(kp.records_folder(record_folder))
        else:
            base.store = ke.KVStore(storage=storage, device=ck.cache_device(where.place))
        try:
            res = ke.invert(model, x, masks, conditioning, s, storage=storage, mask_guided=mask_guided,
                            record_from=record_from_step, all_tokens=all_tokens, mask_resize=mask_resize,
                            fingerprint=fp, progress=pbar, record_path=path, depth=where.depth, base=base)
        except DiskRecordError as e:
            raise NodeInputError(f"{node}: {e}. Free space there, set record_folder to a larger disk, or choose "
                                 f"a smaller storage (int4 is about a quarter of bf16).") from None
        if path is not None and not record_folder.strip():
            res.record.store.rf.delete_on_close = True  # scratch file: gone once ComfyUI drops the record
        ck.finite_tensor(node, "the inversion's trajectory", res.record.trajectory,
                         "the model produced NaN/inf (check its weights, LoRAs and dtype)")
        text = "\n".join([ck.describe(res.record), f"record place: {where.reason}"] + notes)
        return io.NodeOutput(res.record, {"samples": res.inverted}, ui={"text": (text,)})


class KVEditSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KVEditSampler", display_name="KV-Edit Sampler", category=KV_CATEGORY,
            description=("Regenerates only the masked foreground with the target prompt; every attention call "
                         "sees the background through its recorded keys/values. Outside the mask the result "
                         "is bit-exact the source latent."),
            inputs=[
                io.Model.Input("model", tooltip="The same FLUX model (and LoRAs) used by KVInvert."),
                BackgroundKV.Input("background_kv", tooltip="Record from KVInvert or LoadBackgroundKV."),
                io.Conditioning.Input("conditioning", tooltip="Target prompt (FLUX-dev: guidance 5.5 via "
                                                              "FluxGuidance)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the fresh noise used by reinitialisation."),
                io.Int.Input("skip_steps", default=4, min=0, max=199, tooltip="Steps skipped at the start: "
                             "more keeps more of the source's layout in the edited region."),
                io.Boolean.Input("reinit", default=False, tooltip="Start the foreground from fresh noise mixed "
                                 "with the inverted latent (frees the edit from the source; good for removal)."),
                io.Float.Input("attn_scale", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Added to the attention logits of every background key; helps large "
                                       "masks blend in. 0 = off."),
                io.Combo.Input("mode", options=MODES, default="paper", tooltip="paper: the method as published; "
                               "authors code: reproduces the authors' released code numerically."),
                io.Noise.Input("noise", optional=True, tooltip="Optional NOISE (e.g. RandomNoise) instead of "
                                                               "the seed, for reinitialisation."),
                io.Latent.Input("latent", optional=True, tooltip="Optional: the source latent, checked against "
                                                                  "the record."),
                io.Mask.Input("mask", optional=True, tooltip="Optional: the region to edit. The record's own "
                              "mask by default; a larger mask works with any record made without mask_guided, "
                              "any mask with a record of every image token."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="Optional: the schedule, checked against the "
                                                                  "record (the record's own is used)."),
                io.Combo.Input("reinit_from", options=list(REINIT_FROM), default="inverted latent (paper)",
                               optional=True, tooltip="What reinit mixes the noise with, by the first sigma: "
                               "the inverted latent (the paper) or the clean source latent (the authors' code)."),
            ],
            outputs=[io.Latent.Output("edited", tooltip="The edited latent; background bit-exact the source.")],
        )

    @classmethod
    def execute(cls, model, background_kv, conditioning, seed, skip_steps, reinit, attn_scale, mode,
                noise=None, latent=None, mask=None, sigmas=None,
                reinit_from="inverted latent (paper)") -> io.NodeOutput:
        node = "KVEditSampler"
        ck.flux_model(model, node)
        ck.choice(node, "mode", mode, MODES)
        ck.choice(node, "reinit_from", reinit_from, REINIT_FROM)
        attn_scale = ck.finite_number(node, "attn_scale", attn_scale)
        ck.conditioning(node, conditioning, "the target prompt")
        rec = background_kv
        notes = []
        masks = ck.check_record(rec, node, model=model, skip=skip_steps, latent=latent, mask=mask, sig=sigmas,
                                notes=notes)
        noise_t = noise.generate_noise({"samples": rec.source_latent}) if noise is not None else None
        if noise_t is not None:
            ck.finite_tensor(node, "the noise", noise_t, "use another NOISE input")
        if masks is not None:
            notes.append(f"edited with the given mask ({int(masks.flat.sum())} tokens computed; the record's own "
                         f"mask had {int(rec.token_mask.sum())})")
        pbar = comfy.utils.ProgressBar(rec.steps - skip_steps)
        try:
            out = ke.edit(model, rec, conditioning, skip_steps, seed=seed, attn_scale=attn_scale, reinit=reinit,
                          authors_mode=(mode == "authors code"), noise=noise_t, progress=pbar, masks=masks,
                          reinit_from=REINIT_FROM[reinit_from])
        except DiskRecordError as e:
            raise NodeInputError(f"{node}: {e}") from None
        ck.finite_tensor(node, "the edit", out, "the model produced NaN/inf (check its weights and LoRAs)")
        return io.NodeOutput({"samples": out}, ui={"text": ("\n".join(notes),)} if notes else None)


class KVEditCustomSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KVEditCustomSampler", display_name="KV-Edit Sampler (custom sampling)", category=KV_CATEGORY,
            description=("KV-Edit for ComfyUI's SamplerCustomAdvanced: gives a SAMPLER and the SIGMAS to use. "
                         "Wire any guider (e.g. BasicGuider with the target prompt, same model), any NOISE "
                         "(used only by reinit) and the source latent; then KVEditComposite pastes the exact "
                         "background."),
            inputs=[
                BackgroundKV.Input("background_kv", tooltip="Record from KVInvert or LoadBackgroundKV."),
                io.Int.Input("skip_steps", default=4, min=0, max=199, tooltip="Steps skipped at the start."),
                io.Boolean.Input("reinit", default=False, tooltip="Start the foreground from the NOISE mixed "
                                                                  "with the inverted latent."),
                io.Float.Input("attn_scale", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Logit bias of background keys; 0 = off."),
                io.Combo.Input("mode", options=MODES, default="paper", tooltip="paper or authors code."),
            ],
            outputs=[io.Sampler.Output("sampler", tooltip="Plug into SamplerCustomAdvanced."),
                     io.Sigmas.Output("sigmas", tooltip="The record's schedule from the first unskipped step.")],
        )

    @classmethod
    def execute(cls, background_kv, skip_steps, reinit, attn_scale, mode) -> io.NodeOutput:
        node = "KVEditCustomSampler"
        ck.choice(node, "mode", mode, MODES)
        attn_scale = ck.finite_number(node, "attn_scale", attn_scale)
        rec = background_kv
        ck.check_record(rec, node, skip=skip_steps)
        loop = ke.denoise_loop(rec, skip_steps, attn_scale, reinit, mode == "authors code")

        def checked(model_wrap, sigmas, extra_args, callback, noise, latent_image):
            patcher = getattr(model_wrap, "model_patcher", None)
            if patcher is not None:
                ck.flux_model(patcher, node)
                ck.fits_model(rec, patcher, node)
                problems = rec.mismatches(model=ck.fingerprint(patcher, node),
                                          latent_shape=list(latent_image.shape))
                if problems:
                    raise NodeInputError(f"{node}: the guider's model or latent differ from the record: "
                                         + "; ".join(problems))
            ck.finite_tensor(node, "the latent", latent_image, "encode the image again")
            ck.conditioning(node, (getattr(model_wrap, "conds", None) or {}).get("positive"), "the guider's prompt")
            if reinit:
                ck.finite_tensor(node, "the noise", noise, "use another NOISE input")
            own = rec.sigmas[skip_steps:]
            given = sigmas.detach().float().cpu().flatten()
            if given.shape != own.shape or not torch.allclose(given, own.float(), rtol=1e-5, atol=1e-6):
                # the edit follows the record's schedule from skip_steps and starts from the record's
                # trajectory: a split or another schedule would be ignored silently
                got = (f"{given.numel()} sigmas, {float(given[0]):.4g} to {float(given[-1]):.4g}" if given.numel()
                       else "no sigmas")
                raise NodeInputError(f"{node}: connect this node's own sigmas output to SamplerCustomAdvanced "
                                     f"(the edit follows the record's schedule from step {skip_steps}: "
                                     f"{own.numel()} sigmas, {float(own[0]):.4g} to {float(own[-1]):.4g}; got "
                                     f"{got}); SplitSigmas, another scheduler or denoise cannot apply to a KV-Edit")
            try:
                return loop(model_wrap, sigmas, extra_args, callback, noise, latent_image)
            except DiskRecordError as e:
                raise NodeInputError(f"{node}: {e}") from None

        return io.NodeOutput(ke.LoopSampler(checked), rec.sigmas[skip_steps:].clone())


class KVEditComposite(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KVEditComposite", display_name="KV-Edit Composite", category=KV_CATEGORY,
            description="Pastes the record's source latent, bit-exact, outside the mask of a sampled latent.",
            inputs=[io.Latent.Input("samples", tooltip="Output of SamplerCustomAdvanced with KVEditCustomSampler."),
                    BackgroundKV.Input("background_kv", tooltip="The record used for sampling.")],
            outputs=[io.Latent.Output("latent", tooltip="Edited latent with the exact source background.")],
        )

    @classmethod
    def execute(cls, samples, background_kv) -> io.NodeOutput:
        x = samples["samples"]
        if list(x.shape) != list(background_kv.source_latent.shape):
            raise NodeInputError(f"KVEditComposite: latent {list(x.shape)} does not match the record's "
                                 f"{list(background_kv.source_latent.shape)}")
        return io.NodeOutput({"samples": ke.composite(x, background_kv)})


class KVEditInversionFree(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KVEditInversionFree", display_name="KV-Edit (inversion-free)", category=KV_CATEGORY,
            description=("KV-Edit without inversion: two model calls per step, keys/values of one step only, "
                         "so memory does not grow with the number of steps. Background bit-exact."),
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1 model."),
                io.Latent.Input("latent", tooltip="Source latent (one image)."),
                io.Mask.Input("mask", tooltip="Region to edit: 1 = regenerate."),
                io.Conditioning.Input("source", tooltip="Source prompt (guidance 1.5 for FLUX-dev)."),
                io.Conditioning.Input("target", tooltip="Target prompt (guidance 5.5 for FLUX-dev)."),
                io.Int.Input("steps", default=28, min=1, max=200, tooltip="Steps of the schedule."),
                io.Int.Input("skip_steps", default=4, min=0, max=199, tooltip="Steps skipped at the start."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the fixed noise used at every step."),
                io.Float.Input("attn_scale", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Logit bias of background keys; 0 = off."),
                io.Combo.Input("storage", options=STORAGE_CHOICES, default="bf16",
                               tooltip="Storage type of the one-step keys/values."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="Optional schedule (replaces steps)."),
                io.Noise.Input("noise", optional=True, tooltip="Optional NOISE instead of the seed."),
                io.Boolean.Input("mask_guided", default=False, optional=True,
                                 tooltip="Mask the source evaluation's attention (foreground and background "
                                         "see only themselves and the text), as the authors' demo offers."),
                io.Combo.Input("mask_resize", options=list(RESIZE_MODES), default="touched", optional=True,
                               tooltip="Pixel mask to latent pixels: touched (keeps every stroke) or bilinear "
                                       "(the authors' code)."),
            ],
            outputs=[io.Latent.Output("edited", tooltip="Edited latent; background bit-exact the source.")],
        )

    @classmethod
    def execute(cls, model, latent, mask, source, target, steps, skip_steps, seed, attn_scale, storage,
                sigmas=None, noise=None, mask_guided=False, mask_resize="touched") -> io.NodeOutput:
        node = "KVEditInversionFree"
        ck.flux_model(model, node)
        ck.choice(node, "storage", storage, STORAGE_CHOICES)
        attn_scale = ck.finite_number(node, "attn_scale", attn_scale)
        x = ck.source(latent, node)
        ck.conditioning(node, source, "the source prompt", single=True)
        ck.conditioning(node, target, "the target prompt")
        notes = []
        masks = ck.masks(mask, x, node, mask_resize, notes)
        s = ck.sigmas(model, steps, sigmas, node)
        n = int(s.numel()) - 1
        if not 0 <= skip_steps < n:
            raise NodeInputError(f"{node}: skip_steps must be between 0 and {n - 1}")
        noise_t = noise.generate_noise({"samples": x}) if noise is not None else None
        if noise_t is not None:
            ck.finite_tensor(node, "the noise", noise_t, "use another NOISE input")
        out, store = ke.inversion_free(model, x, masks, source, target, s, skip=skip_steps, seed=seed,
                                       attn_scale=attn_scale, storage=storage, noise=noise_t,
                                       mask_guided=bool(mask_guided),
                                       progress=comfy.utils.ProgressBar(n - skip_steps))
        ck.finite_tensor(node, "the edit", out, "the model produced NaN/inf (check its weights and LoRAs)")
        text = "\n".join([f"peak key/value memory {ck.mib(store.peak_bytes)}"] + notes)
        return io.NodeOutput({"samples": out}, ui={"text": (text,)})


class KVEditPixelPaste(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KVEditPixelPaste", display_name="KV-Edit Pixel Paste", category=KV_CATEGORY,
            description=("After VAE decoding: keeps the source image's own pixels outside the mask (no VAE "
                         "round trip there), blending into the edit over a small feather inside the mask."),
            inputs=[io.Image.Input("source", tooltip="The original image."),
                    io.Image.Input("edited", tooltip="The decoded edit."),
                    io.Mask.Input("mask", tooltip="Region that was edited (1 = edited)."),
                    io.Int.Input("feather", default=8, min=0, max=256, tooltip="Blend width in pixels, "
                                                                               "inside the mask.")],
            outputs=[io.Image.Output("image", tooltip="Source pixels outside the mask, the edit inside.")],
        )

    @classmethod
    def execute(cls, source, edited, mask, feather) -> io.NodeOutput:
        node = "KVEditPixelPaste"
        if source.shape[1:3] != edited.shape[1:3]:
            raise NodeInputError(f"{node}: source is {source.shape[2]}x{source.shape[1]} but the edit is "
                                 f"{edited.shape[2]}x{edited.shape[1]}; give images of the same size")
        if source.shape[0] != edited.shape[0] and 1 not in (source.shape[0], edited.shape[0]):
            raise NodeInputError(f"{node}: source holds {source.shape[0]} images and the edit {edited.shape[0]}; "
                                 f"give one source image or as many as edited images")
        m = mask if mask.ndim == 3 else mask.unsqueeze(0)
        B = max(source.shape[0], edited.shape[0])
        if m.shape[0] not in (1, B):
            raise NodeInputError(f"{node}: the mask holds {m.shape[0]} masks for {B} images; give one mask or "
                                 f"one per image")
        notes = []
        if tuple(m.shape[-2:]) != tuple(source.shape[1:3]):
            msg = ck.mask_size_note(node, m.shape[-2:], source.shape[1:3], scale=1)
            notes.append(msg)
            m = F.interpolate(m.unsqueeze(1).float(), size=source.shape[1:3], mode="bilinear")[:, 0]
        # any value above 0 is edited, as KVInvert reads the mask (inner_feather's own cut is 0.5)
        w = inner_feather((m > 0).float(), feather).unsqueeze(-1).to(edited.dtype)
        src = source.expand(B, *source.shape[1:])
        edt = edited.expand(B, *edited.shape[1:])
        c = min(src.shape[-1], edt.shape[-1])
        out = torch.where(w > 0, edt[..., :c] * w + src[..., :c] * (1 - w), src[..., :c])
        return io.NodeOutput(out, ui={"text": ("\n".join(notes),)} if notes else None)

NODES = [KVInvert, KVEditSampler, KVEditCustomSampler, KVEditComposite, KVEditInversionFree, KVEditPixelPaste,
         BackgroundKVCache, LoadBackgroundKV]

"""KV-Edit nodes: invert once, edit many times, background bit-exact."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from comfy_api.latest import io

import comfy.model_management
import comfy.utils
import folder_paths

from ...kernels.kv_record import FILE_SUFFIX, BackgroundRecord, RecordError
from ...kernels.surgery import inner_feather
from ...kernels.token_mask import RESIZE_MODES
from . import checks as ck
from . import engine as ke
from .checks import DEVICE_CHOICES, MODES, RECORD_TOKENS, REINIT_FROM, STORAGE_CHOICES
from ..common import CATEGORY, NodeInputError, log, note

BackgroundKV = io.Custom("BACKGROUND_KV")
KV_CATEGORY = f"{CATEGORY}/kv-edit"
KV_SUBFOLDER = "kv_cache"
PREFIX_MAX = 120


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
                               tooltip="Storage type of the keys/values: bf16 (default), fp16, fp32, or fp8 "
                                       "with a per-tensor scale (half the size of bf16)."),
                io.Combo.Input("cache_device", options=DEVICE_CHOICES, default="cpu",
                               tooltip="Where the record lives: CPU memory (moved block by block while "
                                       "editing) or the compute device (fastest, uses VRAM)."),
                io.Int.Input("record_from_step", default=0, min=0, max=199,
                             tooltip="The smallest skip_steps you will edit with: earlier steps are not "
                                     "recorded, which shrinks the record (0 = record every step)."),
                io.Combo.Input("mask_resize", options=list(RESIZE_MODES), default="touched",
                               tooltip="Pixel mask to latent pixels: touched (bilinear, plus every latent pixel "
                                       "a brush stroke touches) or bilinear (exactly as the authors' code, for "
                                       "comparisons with 'authors code' mode)."),
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
                io.Latent.Output("inverted", tooltip="The fully inverted latent (at the first sigma)."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, mask, conditioning, steps, mask_guided, storage, cache_device,
                record_from_step=0, mask_resize="touched", sigmas=None, record_tokens="background") -> io.NodeOutput:
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
        notes = []
        masks = ck.masks(mask, x, node, mask_resize, notes)
        s = ck.sigmas(model, steps, sigmas, node)
        if record_from_step >= int(s.numel()) - 1:
            raise NodeInputError(f"{node}: record_from_step must be below the step count ({int(s.numel()) - 1})")
        if bool(masks.tokens.all()):
            notes.append(note(node, "the mask covers every token: nothing to keep, the edit is a plain "
                                    "generation from the inverted latent"))
        fp = ck.fingerprint(model, node)  # an unreadable model is refused before the long inversion
        pbar = comfy.utils.ProgressBar(int(s.numel()) - 1)
        res = ke.invert(model, x, masks, conditioning, s, storage=storage,
                        cache_device=ck.cache_device(cache_device), mask_guided=mask_guided,
                        record_from=record_from_step, all_tokens=all_tokens, mask_resize=mask_resize,
                        fingerprint=fp, progress=pbar)
        ck.finite_tensor(node, "the inversion's trajectory", res.record.trajectory,
                         "the model produced NaN/inf (check its weights, LoRAs and dtype)")
        text = "\n".join([ck.describe(res.record)] + notes)
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
        out = ke.edit(model, rec, conditioning, skip_steps, seed=seed, attn_scale=attn_scale, reinit=reinit,
                      authors_mode=(mode == "authors code"), noise=noise_t, progress=pbar, masks=masks,
                      reinit_from=REINIT_FROM[reinit_from])
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
            if reinit:
                ck.finite_tensor(node, "the noise", noise, "use another NOISE input")
            return loop(model_wrap, sigmas, extra_args, callback, noise, latent_image)

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
        w = inner_feather(m, feather).unsqueeze(-1).to(edited.dtype)
        src = source.expand(B, *source.shape[1:])
        edt = edited.expand(B, *edited.shape[1:])
        c = min(src.shape[-1], edt.shape[-1])
        out = torch.where(w > 0, edt[..., :c] * w + src[..., :c] * (1 - w), src[..., :c])
        return io.NodeOutput(out, ui={"text": ("\n".join(notes),)} if notes else None)


def _kv_files() -> list[str]:
    """Records in the input folder; links that lead outside it are not offered (loading refuses them)."""
    root = os.path.realpath(folder_paths.get_input_directory())
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            full = os.path.join(dirpath, f)
            if f.endswith(FILE_SUFFIX) and os.path.realpath(full).startswith(root + os.sep):
                found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)


def clean_partial_saves() -> list[str]:
    """Remove ``*.partial`` files a killed save left in output/kv_cache (ComfyUI runs one
    prompt at a time, so none is being written when this runs). Returns the removed names."""
    out_dir = os.path.join(folder_paths.get_output_directory(), KV_SUBFOLDER)
    removed = []
    if os.path.isdir(out_dir):
        for f in os.listdir(out_dir):
            path = os.path.join(out_dir, f)
            if f.endswith(FILE_SUFFIX + ".partial") and os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                removed.append(f)
    return removed


def _prefix(node: str, filename_prefix) -> str:
    text = str(filename_prefix).strip()
    bad = [c for c in text if c == "\x00" or ord(c) < 32 or c in '/\\:*?"<>|']
    if bad:
        raise NodeInputError(f"{node}: filename_prefix holds characters a file name cannot have "
                             f"({sorted(set(map(repr, bad)))[:4]}); use letters, digits, '-', '_' and '.'")
    if len(text) > PREFIX_MAX:
        raise NodeInputError(f"{node}: filename_prefix is {len(text)} characters long; use at most {PREFIX_MAX}")
    if text in (".", ".."):
        raise NodeInputError(f"{node}: filename_prefix cannot be {text!r}")
    return text or "kv_edit"


class BackgroundKVCache(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BackgroundKVCache", display_name="Background KV Cache", category=KV_CATEGORY,
            description=(f"Chooses where a background record lives (CPU or compute device) and its storage "
                         f"type, and optionally saves it as a safetensors file (*{FILE_SUFFIX}) in ComfyUI's "
                         f"output folder ({KV_SUBFOLDER}/). Copy it to the input folder to load it later with "
                         f"LoadBackgroundKV, also after restarting ComfyUI."),
            is_output_node=True,
            inputs=[BackgroundKV.Input("background_kv", tooltip="Record from KVInvert."),
                    io.Combo.Input("storage", options=["keep"] + STORAGE_CHOICES, default="keep",
                                   tooltip="Convert the keys/values to this type (keep = unchanged)."),
                    io.Combo.Input("cache_device", options=DEVICE_CHOICES, default="cpu",
                                   tooltip="Where the record lives while editing."),
                    io.Boolean.Input("save", default=False, tooltip="Write the record to the output folder "
                                     "(records are large: see the size shown on the node)."),
                    io.String.Input("filename_prefix", default="kv_edit",
                                    tooltip="File name prefix inside output/kv_cache/.")],
            outputs=[BackgroundKV.Output("stored", tooltip="The (converted) record.")],
        )

    @classmethod
    def execute(cls, background_kv, storage, cache_device, save, filename_prefix) -> io.NodeOutput:
        node = "BackgroundKVCache"
        ck.choice(node, "storage", storage, ["keep"] + STORAGE_CHOICES)
        ck.choice(node, "cache_device", cache_device, DEVICE_CHOICES)
        prefix = _prefix(node, filename_prefix) if save else None
        rec = background_kv
        want = None if storage == "keep" else storage
        device = ck.cache_device(cache_device)
        if want not in (None, rec.store.storage) or device != rec.store.device:
            rec = rec.converted(storage=want, device=device)
        lines = [ck.describe(rec)]
        if save:
            out_dir = os.path.join(folder_paths.get_output_directory(), KV_SUBFOLDER)
            path = None
            try:
                os.makedirs(out_dir, exist_ok=True)
                removed = clean_partial_saves()
                if removed:
                    lines.append(f"removed {len(removed)} unfinished save(s) left by an interrupted run")
                i = 1
                while os.path.exists(os.path.join(out_dir, f"{prefix}_{i:05d}{FILE_SUFFIX}")):
                    i += 1
                path = os.path.join(out_dir, f"{prefix}_{i:05d}{FILE_SUFFIX}")
                rec.save(path)
            except OSError as e:
                if path is not None and os.path.isfile(path + ".partial"):
                    os.remove(path + ".partial")
                raise NodeInputError(f"{node}: could not write the record to output/{KV_SUBFOLDER} "
                                     f"({e.strerror or e}); free disk space or check the folder's permissions") from None
            lines.append(f"saved {KV_SUBFOLDER}/{os.path.basename(path)} ({ck.mib(os.path.getsize(path))})")
        return io.NodeOutput(rec, ui={"text": ("\n".join(lines),)})


class LoadBackgroundKV(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadBackgroundKV", display_name="Load Background KV", category=KV_CATEGORY,
            description=(f"Loads a background record (*{FILE_SUFFIX}, from ComfyUI's input folder) saved by "
                         f"Background KV Cache, so one inversion serves many prompts, seeds and skip counts. "
                         f"Only safetensors are read; every tensor is checked before use."),
            inputs=[io.Combo.Input("file", options=_kv_files(), tooltip="A record in the input folder."),
                    io.Combo.Input("storage", options=["keep"] + STORAGE_CHOICES, default="keep",
                                   tooltip="Convert the keys/values to this type after loading."),
                    io.Combo.Input("cache_device", options=DEVICE_CHOICES, default="cpu",
                                   tooltip="Where the record lives while editing.")],
            outputs=[BackgroundKV.Output("background_kv", tooltip="The loaded record.")],
        )

    @classmethod
    def execute(cls, file, storage, cache_device) -> io.NodeOutput:
        node = "LoadBackgroundKV"
        ck.choice(node, "storage", storage, ["keep"] + STORAGE_CHOICES)
        ck.choice(node, "cache_device", cache_device, DEVICE_CHOICES)
        root = os.path.realpath(folder_paths.get_input_directory())
        path = os.path.realpath(os.path.join(root, file))
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            raise NodeInputError(f"{node}: no record named {file!r} in the input folder")
        try:
            rec = BackgroundRecord.load(path, device=ck.cache_device(cache_device),
                                        storage=None if storage == "keep" else storage)
        except RecordError as e:
            raise NodeInputError(f"{node}: {e}") from None
        ck.finite_tensor(node, f"{file}'s trajectory", rec.trajectory, "the file is damaged; invert again")
        ck.finite_tensor(node, f"{file}'s source latent", rec.source_latent, "the file is damaged; invert again")
        for key, entry in rec.store.entries.items():
            for t in (entry.k, entry.v):
                ck.finite_tensor(node, f"{file}'s keys/values (step {key[0]}, {key[1][0]} block {key[1][1]})",
                                 t.float() if t.element_size() == 1 else t, "the file is damaged; invert again")
        return io.NodeOutput(rec, ui={"text": (ck.describe(rec),)})

    @classmethod
    def fingerprint_inputs(cls, file, storage, cache_device):
        path = os.path.join(folder_paths.get_input_directory(), file)
        return os.path.getmtime(path) if os.path.exists(path) else file


NODES = [KVInvert, KVEditSampler, KVEditCustomSampler, KVEditComposite, KVEditInversionFree, KVEditPixelPaste,
         BackgroundKVCache, LoadBackgroundKV]


def _startup_cleanup() -> None:
    """At start (this module loads when ComfyUI starts): remove unfinished saves of a killed run."""
    try:
        removed = clean_partial_saves()
    except OSError as e:  # never stop ComfyUI from starting; the next save tries again
        log.warning("KV-Edit: could not remove unfinished record saves: %s", e)
        return
    if removed:
        log.info("KV-Edit: removed unfinished record saves %s", removed)


_startup_cleanup()

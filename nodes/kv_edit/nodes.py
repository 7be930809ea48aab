"""KV-Edit nodes: invert once, edit many times, background bit-exact."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from comfy_api.latest import io

import comfy.model_management
import comfy.utils
import folder_paths

from ...kernels.kv_disk import DiskRecordError
from ...kernels.kv_record import FILE_SUFFIX, BackgroundRecord, RecordError
from ...kernels.kv_store import STORAGE_TYPES
from ...kernels.surgery import inner_feather
from ...kernels.token_mask import RESIZE_MODES, MaskError, build_token_masks
from . import engine as ke
from . import place as kp
from ..common import CATEGORY, NodeInputError, note
from ..families import FLUX, detect_family

BackgroundKV = io.Custom("BACKGROUND_KV")
KV_CATEGORY = f"{CATEGORY}/kv-edit"
STORAGE_CHOICES = [k for k, v in STORAGE_TYPES.items() if v is not None]
CACHE_PLACES = ["keep", "cpu", "compute device", "disk"]
MODES = ["paper", "authors code"]
KV_SUBFOLDER = "kv_cache"


def _flux(model, node: str):
    return detect_family(model, node, allowed=(FLUX,))


def _cache_device(choice: str):
    return comfy.model_management.get_torch_device() if choice == "compute device" else torch.device("cpu")


def _source(latent: dict, node: str) -> torch.Tensor:
    x = latent["samples"]
    if x.ndim != 4:
        raise NodeInputError(f"{node}: expected a FLUX image latent [B, 16, h, w], got shape {list(x.shape)}")
    if x.shape[0] != 1:
        raise NodeInputError(f"{node}: the latent holds {x.shape[0]} images; KV-Edit inverts one image at a "
                             f"time (pick one with 'Latent From Batch')")
    return x


def _masks(mask: torch.Tensor, latent: torch.Tensor, node: str, resize: str = "touched"):
    m = mask if mask.ndim == 3 else mask.unsqueeze(0)
    if m.ndim != 3 or m.shape[0] != 1:
        raise NodeInputError(f"{node}: give one mask [H, W] for the image (got shape {list(mask.shape)})")
    try:
        return build_token_masks(m, latent.shape[-2:], FLUX.patch, resize=resize)
    except MaskError as e:
        raise NodeInputError(f"{node}: {e}") from None


def _sigmas(model, steps: int, sigmas, node: str) -> torch.Tensor:
    if sigmas is None:
        return ke.default_sigmas(model, steps)
    s = sigmas.float().cpu().flatten()
    if s.numel() < 2 or float(s[-1]) != 0.0 or not bool((s[:-1] > s[1:]).all()):
        raise NodeInputError(f"{node}: SIGMAS must fall strictly and end at 0 (a full schedule from a "
                             f"scheduler node with denoise 1.0)")
    return s


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def describe(record: BackgroundRecord) -> str:
    hidden = record.info.get("hidden", record.kv_shape[1] * record.kv_shape[3] if record.kv_shape else 0)
    blocks = len(record.blocks)
    authors = 2 * blocks * hidden * 2 * record.total_tokens * record.steps
    kv = record.store.nbytes()
    ratio = f" = {kv / authors:.1%} of recording every token in bf16" if authors else ""
    where = f"on disk, streamed from {record.store.path}" if record.place() == "disk" else \
        f"on {record.store.device}"
    return (f"background keys/values: {_mib(kv)} ({record.store.storage}, {where}), "
            f"{record.background_tokens}/{record.total_tokens} background tokens x {len(record.store.steps())} "
            f"steps x {blocks} blocks{ratio}; trajectory {_mib(record.trajectory.numel() * 4)}")


def _check_record(record: BackgroundRecord, node: str, model=None, skip: int | None = None, latent=None,
                  mask=None, sigmas=None):
    problems = record.mismatches(model=ke.model_fingerprint(model) if model is not None else None,
                                 sigmas=sigmas.float().cpu().flatten() if sigmas is not None else None,
                                 latent_shape=list(latent["samples"].shape) if latent is not None else None,
                                 latent_mask=_masks(mask, record.source_latent, node).latent if mask is not None
                                 else None)
    if problems:
        raise NodeInputError(f"{node}: this background record was made for another " + "; another ".join(problems)
                             + ". Run KVInvert again for this edit, or use the matching inputs.")
    if skip is not None and not 0 <= skip < record.steps:
        raise NodeInputError(f"{node}: skip_steps must be between 0 and {record.steps - 1} for a record of "
                             f"{record.steps} steps")
    if skip is not None and record.store.entries and any(
            s not in record.store.steps() for s in range(skip, record.steps)):
        first = min(record.store.steps())
        raise NodeInputError(f"{node}: the record starts at step {first} (record_from_step); use skip_steps >= "
                             f"{first} or invert again")


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
                io.Combo.Input("cache_device", options=kp.PLACES, default="auto",
                               tooltip="Where the record lives: auto (CPU memory when it fits in "
                                       "memory_limit_gb, else disk), CPU memory (moved block by block while "
                                       "editing), the compute device (fastest, uses VRAM), or disk (written "
                                       "while inverting, streamed block by block while editing)."),
                io.Int.Input("record_from_step", default=0, min=0, max=199,
                             tooltip="The smallest skip_steps you will edit with: earlier steps are not "
                                     "recorded, which shrinks the record (0 = record every step)."),
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
            ],
            outputs=[
                BackgroundKV.Output("background_kv", tooltip="The background record for KV-Edit samplers."),
                io.Latent.Output("inverted", tooltip="The fully inverted latent (at the first sigma)."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, mask, conditioning, steps, mask_guided, storage, cache_device,
                record_from_step=0, mask_resize="touched", memory_limit_gb=0.0, record_folder="",
                sigmas=None) -> io.NodeOutput:
        node = "KVInvert"
        _flux(model, node)
        x = _source(latent, node)
        masks = _masks(mask, x, node, mask_resize)
        s = _sigmas(model, steps, sigmas, node)
        if record_from_step >= int(s.numel()) - 1:
            raise NodeInputError(f"{node}: record_from_step must be below the step count ({int(s.numel()) - 1})")
        notes = []
        if bool(masks.tokens.all()):
            notes.append(note(node, "the mask covers every token: nothing to keep, the edit is a plain "
                                    "generation from the inverted latent"))
        if storage not in STORAGE_CHOICES:
            raise NodeInputError(f"{node}: storage must be one of {STORAGE_CHOICES}, got {storage!r}")
        base = ke.empty_record(model, x, masks, s, storage, mask_guided=mask_guided)
        need, entry = kp.record_need(base, base.steps - record_from_step)
        where = kp.choose(node, cache_device, need, entry, memory_limit_gb)
        pbar = comfy.utils.ProgressBar(int(s.numel()) - 1)
        path = None
        if where.place == "disk":
            path = kp.new_record_path(kp.records_folder(record_folder))
        else:
            base.store = ke.KVStore(storage=storage, device=_cache_device(where.place))
        try:
            res = ke.invert(model, x, masks, conditioning, s, storage=storage, mask_guided=mask_guided,
                            record_from=record_from_step, progress=pbar, record_path=path, depth=where.depth,
                            base=base)
        except DiskRecordError as e:
            raise NodeInputError(f"{node}: {e}. Free space there, set record_folder to a larger disk, or choose "
                                 f"a smaller storage (int4 is about a quarter of bf16).") from None
        if path is not None and not record_folder.strip():
            res.record.store.rf.delete_on_close = True  # scratch file: gone once ComfyUI drops the record
        text = "\n".join([describe(res.record), f"record place: {where.reason}"] + notes)
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
                io.Mask.Input("mask", optional=True, tooltip="Optional: the mask, checked against the record."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="Optional: the schedule, checked against the "
                                                                  "record (the record's own is used)."),
            ],
            outputs=[io.Latent.Output("edited", tooltip="The edited latent; background bit-exact the source.")],
        )

    @classmethod
    def execute(cls, model, background_kv, conditioning, seed, skip_steps, reinit, attn_scale, mode,
                noise=None, latent=None, mask=None, sigmas=None) -> io.NodeOutput:
        node = "KVEditSampler"
        _flux(model, node)
        rec = background_kv
        _check_record(rec, node, model=model, skip=skip_steps, latent=latent, mask=mask, sigmas=sigmas)
        noise_t = noise.generate_noise({"samples": rec.source_latent}) if noise is not None else None
        pbar = comfy.utils.ProgressBar(rec.steps - skip_steps)
        try:
            out = ke.edit(model, rec, conditioning, skip_steps, seed=seed, attn_scale=attn_scale, reinit=reinit,
                          authors_mode=(mode == "authors code"), noise=noise_t, progress=pbar)
        except DiskRecordError as e:
            raise NodeInputError(f"{node}: {e}") from None
        return io.NodeOutput({"samples": out})


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
        rec = background_kv
        _check_record(rec, node, skip=skip_steps)
        loop = ke.denoise_loop(rec, skip_steps, attn_scale, reinit, mode == "authors code")

        def checked(model_wrap, sigmas, extra_args, callback, noise, latent_image):
            patcher = getattr(model_wrap, "model_patcher", None)
            if patcher is not None:
                _flux(patcher, node)
                problems = rec.mismatches(model=ke.model_fingerprint(patcher),
                                          latent_shape=list(latent_image.shape))
                if problems:
                    raise NodeInputError(f"{node}: the guider's model or latent differ from the record: "
                                         + "; ".join(problems))
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
            ],
            outputs=[io.Latent.Output("edited", tooltip="Edited latent; background bit-exact the source.")],
        )

    @classmethod
    def execute(cls, model, latent, mask, source, target, steps, skip_steps, seed, attn_scale, storage,
                sigmas=None, noise=None) -> io.NodeOutput:
        node = "KVEditInversionFree"
        _flux(model, node)
        x = _source(latent, node)
        masks = _masks(mask, x, node)
        s = _sigmas(model, steps, sigmas, node)
        n = int(s.numel()) - 1
        if not 0 <= skip_steps < n:
            raise NodeInputError(f"{node}: skip_steps must be between 0 and {n - 1}")
        noise_t = noise.generate_noise({"samples": x}) if noise is not None else None
        out, store = ke.inversion_free(model, x, masks, source, target, s, skip=skip_steps, seed=seed,
                                       attn_scale=attn_scale, storage=storage, noise=noise_t,
                                       progress=comfy.utils.ProgressBar(n - skip_steps))
        return io.NodeOutput({"samples": out}, ui={"text": (f"peak key/value memory {_mib(store.peak_bytes)}",)})


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
        m = mask if mask.ndim == 3 else mask.unsqueeze(0)
        if tuple(m.shape[-2:]) != tuple(source.shape[1:3]):
            note(node, "mask resized to the image")
            m = F.interpolate(m.unsqueeze(1).float(), size=source.shape[1:3], mode="bilinear")[:, 0]
        w = inner_feather(m, feather).unsqueeze(-1).to(edited.dtype)
        B = max(source.shape[0], edited.shape[0])
        src = source.expand(B, *source.shape[1:])
        edt = edited.expand(B, *edited.shape[1:])
        c = min(src.shape[-1], edt.shape[-1])
        out = torch.where(w > 0, edt[..., :c] * w + src[..., :c] * (1 - w), src[..., :c])
        return io.NodeOutput(out)


def _kv_files() -> list[str]:
    root = folder_paths.get_input_directory()
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(FILE_SUFFIX):
                found.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(found)


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
                    io.Combo.Input("cache_device", options=CACHE_PLACES, default="keep",
                                   tooltip="Where the record lives while editing: keep (where it is), CPU "
                                           "memory, the compute device, or disk (streamed)."),
                    io.Boolean.Input("save", default=False, tooltip="Write the record to the output folder "
                                     "(records are large: see the size shown on the node)."),
                    io.String.Input("filename_prefix", default="kv_edit",
                                    tooltip="File name prefix inside output/kv_cache/.")],
            outputs=[BackgroundKV.Output("stored", tooltip="The (converted) record.")],
        )

    @classmethod
    def execute(cls, background_kv, storage, cache_device, save, filename_prefix) -> io.NodeOutput:
        node = "BackgroundKVCache"
        rec = background_kv
        want = None if storage == "keep" else storage
        if want is not None and want not in STORAGE_CHOICES:
            raise NodeInputError(f"{node}: storage must be keep or one of {STORAGE_CHOICES}, got {storage!r}")
        if cache_device not in CACHE_PLACES:
            raise NodeInputError(f"{node}: cache_device must be one of {CACHE_PLACES}, got {cache_device!r}")
        place = rec.place() if cache_device == "keep" else cache_device
        try:
            if place == "disk" and (rec.place() != "disk" or want not in (None, rec.store.storage)):
                if want not in (None, rec.store.storage):
                    rec = rec.converted(storage=want, device="cpu")
                path = kp.new_record_path(kp.records_folder(""))
                rec.save(path)
                rec = BackgroundRecord.load(path, stream=True)
                rec.store.rf.delete_on_close = True
            elif place != "disk":
                device = _cache_device(place)
                if want not in (None, rec.store.storage) or rec.place() == "disk" or device != rec.store.device:
                    rec = rec.converted(storage=want, device=device)
        except (DiskRecordError, RecordError) as e:
            raise NodeInputError(f"{node}: {e}") from None
        lines = [describe(rec)]
        if save:
            out_dir = os.path.join(folder_paths.get_output_directory(), KV_SUBFOLDER)
            os.makedirs(out_dir, exist_ok=True)
            prefix = os.path.basename(filename_prefix.strip()) or "kv_edit"
            i = 1
            while os.path.exists(os.path.join(out_dir, f"{prefix}_{i:05d}{FILE_SUFFIX}")):
                i += 1
            path = os.path.join(out_dir, f"{prefix}_{i:05d}{FILE_SUFFIX}")
            try:
                if rec.place() == "disk":
                    rec.store.begin()
                    kp.copy_record(rec.store.path, path)
                else:
                    rec.save(path)
            except (DiskRecordError, RecordError, OSError) as e:
                raise NodeInputError(f"{node}: cannot save the record: {e}") from None
            lines.append(f"saved {KV_SUBFOLDER}/{os.path.basename(path)} ({_mib(os.path.getsize(path))})")
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
                    io.Combo.Input("cache_device", options=kp.PLACES, default="auto",
                                   tooltip="Where the record lives while editing: auto (CPU memory when it "
                                           "fits in free RAM minus a safety margin, else streamed from the file), "
                                           "CPU memory, the compute device, or disk (streamed from the file).")],
            outputs=[BackgroundKV.Output("background_kv", tooltip="The loaded record.")],
        )

    @classmethod
    def execute(cls, file, storage, cache_device) -> io.NodeOutput:
        node = "LoadBackgroundKV"
        root = os.path.realpath(folder_paths.get_input_directory())
        path = os.path.realpath(os.path.join(root, file))
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            raise NodeInputError(f"{node}: no record named {file!r} in the input folder")
        want = None if storage == "keep" else storage
        if want is not None and want not in STORAGE_CHOICES:
            raise NodeInputError(f"{node}: storage must be keep or one of {STORAGE_CHOICES}, got {storage!r}")
        try:
            rec = BackgroundRecord.load(path, stream=True)
            need, entry = rec.nbytes(), rec.store.entry_bytes()
            where = kp.choose(node, cache_device, need, entry, 0.0)
            if where.place != "disk" or want not in (None, rec.store.storage):
                mem = rec.converted(storage=want, device=_cache_device("cpu" if where.place == "disk" else
                                                                        where.place))
                rec.store.rf.close()
                rec = mem
                if where.place == "disk":  # another storage type: a converted copy, streamed
                    copy = kp.new_record_path(kp.records_folder(""))
                    rec.save(copy)
                    rec = BackgroundRecord.load(copy, stream=True)
                    rec.store.rf.delete_on_close = True
        except (RecordError, DiskRecordError) as e:
            raise NodeInputError(f"{node}: {e}") from None
        return io.NodeOutput(rec, ui={"text": (describe(rec) + f"\nrecord place: {where.reason}",)})

    @classmethod
    def fingerprint_inputs(cls, file, storage, cache_device):
        path = os.path.join(folder_paths.get_input_directory(), file)
        return os.path.getmtime(path) if os.path.exists(path) else file


NODES = [KVInvert, KVEditSampler, KVEditCustomSampler, KVEditComposite, KVEditInversionFree, KVEditPixelPaste,
         BackgroundKVCache, LoadBackgroundKV]

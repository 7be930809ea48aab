"""KV-Edit record-file nodes: BackgroundKVCache (where a record lives, its storage type, saving
it) and LoadBackgroundKV (loading a saved record, in memory or streamed from the file)."""
from __future__ import annotations

import os

from comfy_api.latest import io

import folder_paths

from ...kernels.kv_disk import DiskRecordError
from ...kernels.kv_record import FILE_SUFFIX, BackgroundRecord, RecordError
from . import checks as ck
from . import place as kp
from .checks import CACHE_PLACES, DEVICE_CHOICES, STORAGE_CHOICES
from ..common import CATEGORY, NodeInputError, log

BackgroundKV = io.Custom("BACKGROUND_KV")
KV_CATEGORY = f"{CATEGORY}/kv-edit"
KV_SUBFOLDER = "kv_cache"
PREFIX_MAX = 120


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
        ck.choice(node, "storage", storage, ["keep"] + STORAGE_CHOICES)
        ck.choice(node, "cache_device", cache_device, CACHE_PLACES)
        prefix = _prefix(node, filename_prefix) if save else None
        rec = background_kv
        want = None if storage == "keep" else storage
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
                device = ck.cache_device(place)
                if want not in (None, rec.store.storage) or rec.place() == "disk" or device != rec.store.device:
                    rec = rec.converted(storage=want, device=device)
        except (DiskRecordError, RecordError) as e:
            raise NodeInputError(f"{node}: {e}") from None
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
                if rec.place() == "disk":
                    rec.store.begin()
                    kp.copy_record(rec.store.path, path)
                else:
                    rec.save(path)
            except (DiskRecordError, RecordError) as e:
                raise NodeInputError(f"{node}: cannot save the record: {e}") from None
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
                    io.Combo.Input("cache_device", options=kp.PLACES, default="auto",
                                   tooltip="Where the record lives while editing: auto (CPU memory when it "
                                           "fits in free RAM minus a safety margin, else streamed from the file), "
                                           "CPU memory, the compute device, or disk (streamed from the file).")],
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
        want = None if storage == "keep" else storage
        if want is not None and want not in STORAGE_CHOICES:
            raise NodeInputError(f"{node}: storage must be keep or one of {STORAGE_CHOICES}, got {storage!r}")
        try:
            rec = BackgroundRecord.load(path, stream=True)
            need, entry = rec.nbytes(), rec.store.entry_bytes()
            where = kp.choose(node, cache_device, need, entry, 0.0)
            if where.place != "disk" or want not in (None, rec.store.storage):
                # read into memory: every entry is checked for NaN/inf as it is read (kv_record)
                mem = rec.converted(storage=want, device=ck.cache_device("cpu" if where.place == "disk" else
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
        ck.finite_tensor(node, f"{file}'s trajectory", rec.trajectory, "the file is damaged; invert again")
        ck.finite_tensor(node, f"{file}'s source latent", rec.source_latent, "the file is damaged; invert again")
        if rec.place() != "disk":
            # records in memory: every entry is checked here; a streamed record's entries are not scanned
            # (that would read the whole file) -- each is verified by its CRC-32 checksum when read
            for key, entry in rec.store.entries.items():
                for t in entry.values():
                    if t.is_floating_point():
                        ck.finite_tensor(node, f"{file}'s keys/values (step {key[0]}, {key[1][0]} block {key[1][1]})",
                                         t.float() if t.element_size() == 1 else t, "the file is damaged; invert again")
        return io.NodeOutput(rec, ui={"text": (ck.describe(rec) + f"\nrecord place: {where.reason}",)})

    @classmethod
    def fingerprint_inputs(cls, file, storage, cache_device):
        path = os.path.join(folder_paths.get_input_directory(), file)
        return os.path.getmtime(path) if os.path.exists(path) else file


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

"""Where a KV-Edit record lives: the compute device, CPU memory, or a file on disk that the
edit streams block by block. ``auto`` picks CPU memory when the record fits in the memory the
user allows, disk otherwise, and says why on the node."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

import folder_paths

from ...kernels.kv_record import FILE_SUFFIX, BackgroundRecord
from ...kernels.kv_store import entry_nbytes
from ..common import NodeInputError

PLACES = ["auto", "cpu", "compute device", "disk"]
RECORDS_SUBFOLDER = "kv_records"
MIN_MARGIN = 4 * 2**30     # free RAM auto leaves untouched ...
MARGIN_FRACTION = 0.15     # ... or this share of the machine's RAM, whichever is more
MAX_DEPTH = 4              # entries a streamed record keeps in flight


def gib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


@dataclass
class Place:
    place: str      # "cpu", "compute device" or "disk"
    reason: str
    depth: int = MAX_DEPTH


def memory_allowed(limit_gb: float) -> tuple[int, str]:
    """Bytes a record may take in RAM, and how that figure came about."""
    if limit_gb and limit_gb > 0:
        return int(limit_gb * 2**30), f"the memory limit of {limit_gb:g} GiB"
    vm = psutil.virtual_memory()
    margin = max(MIN_MARGIN, int(MARGIN_FRACTION * vm.total))
    allowed = max(0, int(vm.available) - margin)
    return allowed, f"{gib(allowed)} (free RAM {gib(vm.available)} minus a {gib(margin)} safety margin)"


def record_need(record: BackgroundRecord, steps: int) -> tuple[int, int]:
    """(bytes of the record in memory, bytes of its largest entry) for ``steps`` recorded steps."""
    if record.kv_shape[2] == 0:
        entry = 0
    else:
        entry = entry_nbytes(record.store.storage, record.kv_shape)
    return entry * len(record.blocks) * steps + record.trajectory.numel() * 4, entry


def choose(node: str, choice: str, need: int, entry: int, limit_gb: float) -> Place:
    if choice not in PLACES:
        raise NodeInputError(f"{node}: cache_device must be one of {PLACES}, got {choice!r}")
    if limit_gb < 0:
        raise NodeInputError(f"{node}: memory_limit_gb must be 0 (automatic) or a positive number of GiB")
    allowed, how = memory_allowed(limit_gb)
    if limit_gb > 0 and entry and allowed < entry:
        raise NodeInputError(f"{node}: memory_limit_gb {limit_gb:g} GiB is below what one block of this record "
                             f"needs ({gib(entry)}); raise it to at least {entry / 2**30:.3f} GiB")
    depth = max(1, min(MAX_DEPTH, allowed // entry if entry else MAX_DEPTH))
    if choice == "compute device":
        return Place("compute device", f"asked for the compute device (record {gib(need)})", depth)
    if choice == "disk":
        return Place("disk", f"asked for disk (record {gib(need)}, streamed {depth} blocks at a time)", depth)
    if choice == "cpu":
        warn = "" if need <= allowed else f"; it is more than {how}: choose auto or disk if memory runs out"
        return Place("cpu", f"asked for CPU memory (record {gib(need)}{warn})", depth)
    if need <= allowed:
        return Place("cpu", f"auto: the record ({gib(need)}) fits in {how}", depth)
    return Place("disk", f"auto: the record ({gib(need)}) is more than {how}; streamed from disk, "
                         f"{depth} blocks at a time", depth)


def records_folder(folder: str) -> str:
    """The folder of streamed records: ``folder`` if given, else ComfyUI's temp folder
    (emptied when ComfyUI starts)."""
    folder = (folder or "").strip()
    if not folder:
        return os.path.join(folder_paths.get_temp_directory(), RECORDS_SUBFOLDER)
    return os.path.abspath(os.path.expanduser(folder))


def new_record_path(folder: str, prefix: str = "kv_edit") -> str:
    os.makedirs(folder, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    i = 0
    while True:
        path = os.path.join(folder, f"{prefix}_{stamp}_{os.getpid()}_{i}{FILE_SUFFIX}")
        if not os.path.exists(path) and not os.path.exists(path + ".partial"):
            return path
        i += 1


def copy_record(src: str, dst: str) -> None:
    """Copy a finished record file (a hard link when both lie on one file system)."""
    import shutil

    tmp = dst + ".partial"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)

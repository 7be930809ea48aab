"""Rewriting saved background key/value records, for the tests of how a broken file is refused."""
import json

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def rewrite_record(path, change):
    """Apply ``change(tensors, header)`` to a saved record and write it back as a version-1 file
    (no checksums), so that the header, shape and type checks are reached rather than the checksum."""
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(path)
    header = json.loads(meta["header"])
    change(tensors, header)
    meta["header"] = json.dumps(header)
    meta["version"] = "1"
    meta.pop("checksums", None)
    meta.pop("complete", None)
    save_file(tensors, path, metadata=meta)
    return path

"""Content hashes: a record's fields plus a fingerprint of every file it reads, computed without decoding."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

from cope.records import Record

_FULL_HASH_LIMIT = 64 << 20  # files up to 64 MiB are hashed whole; larger ones by size, mtime, head and tail
_EDGE = 4 << 20


def file_fingerprint(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    h = hashlib.blake2b(digest_size=16)
    h.update(str(st.st_size).encode())
    with open(path, "rb") as f:
        if st.st_size <= _FULL_HASH_LIMIT:
            while block := f.read(1 << 20):
                h.update(block)
        else:
            h.update(str(st.st_mtime_ns).encode())
            h.update(f.read(_EDGE))
            f.seek(st.st_size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def sha256_files(paths: Sequence[str | os.PathLike[str]], chunk: int = 1 << 22) -> str:
    """sha256 (hex) of the concatenated bytes of files (model weights: their fingerprint goes into model tags)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def record_hash(record: Record) -> str:
    """Stable hash of what an item's vectors depend on (fields and file bytes; not the manifest's location)."""
    payload = record.model_dump(mode="json")
    payload["_files"] = [file_fingerprint(p) for p in record.files()]
    for key in ("uri", "recording"):  # paths themselves do not change the content
        payload.pop(key, None)
    payload.pop("images", None)
    if payload.get("snapshots"):
        payload["snapshots"] = [s["t"] for s in payload["snapshots"]]
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def slice_hash(record_digest: str, start: float | None, end: float | None) -> str:
    return hashlib.blake2b(f"{record_digest}|{start}|{end}".encode(), digest_size=16).hexdigest()

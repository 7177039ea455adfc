"""Content hashes: a record's fields plus a fingerprint of every file it reads, computed without decoding; and the
one place that checks media paths before anything opens them (:func:`stat_media`, :func:`open_media`).

Only regular files are read: a folder, a FIFO (opening one for reading blocks until a writer comes), a device such
as ``/dev/zero`` (endless), a socket, a symlink loop or a missing file is reported with its reason, never opened.
Hashing never raises for such a path (its fingerprint names the problem); extraction then fails the record with
the reason, which lands in the errors table while the job carries on.

Remote media (``http(s)://``, ``s3://``, ``gs://``, ``az://``; :mod:`cope.media`) are read through the same two
doors: :func:`open_media` fetches a picture into memory, :func:`local_media` downloads a video to a temporary file,
both within a size cap. Their fingerprint (:func:`remote_fingerprint`) is the object's version as the store announces
it (ETag, Last-Modified, version id, size: one HEAD), or the hash of its bytes when it announces none, so a changed
remote file is embedded again and an unchanged one skipped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import stat
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from cope import media
from cope.errors import ExtractionError, MissingExtraError
from cope.records import Record

_FULL_HASH_LIMIT = 64 << 20  # files up to 64 MiB are hashed whole; larger ones by size, mtime, head and tail
_EDGE = 4 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def _stat_problem(path: str) -> tuple[os.stat_result | None, str | None]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "file not found (broken symlink)" if os.path.islink(path) else "file not found"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "symlink loop"
        if e.errno == errno.ENOTDIR:
            return None, "file not found (a parent in the path is not a folder)"
        if e.errno in (errno.EACCES, errno.EPERM):
            return None, "permission denied"
        return None, f"cannot read ({e.strerror or type(e).__name__})"
    except ValueError as e:  # an embedded NUL byte
        return None, f"invalid path ({e})"
    return st, _not_regular(st.st_mode)


def stat_media(path: str | os.PathLike[str], max_bytes: int | None = None) -> os.stat_result:
    """``os.stat`` of a media file, or :class:`ExtractionError` ``"<path>: <reason>"`` without opening anything:
    "file not found", "symlink loop", "not a regular file (a FIFO)", "larger than N bytes (M bytes)"..."""
    path = os.fspath(path)
    if "://" in path:
        raise ExtractionError(f"{path}: not a local file (remote media are read by open_media and local_media)")
    st, problem = _stat_problem(path)
    if problem is None and st is not None and max_bytes is not None and st.st_size > max_bytes:
        problem = f"larger than {max_bytes} bytes ({st.st_size} bytes)"
    if problem is not None or st is None:
        raise ExtractionError(f"{path}: {problem}")
    return st


def open_media(path: str | os.PathLike[str], max_bytes: int | None = None) -> BinaryIO:
    """Open a regular file for reading (checked before and, against a swap, after opening; the open never blocks
    on a FIFO). Raises :class:`ExtractionError` with the reason, like :func:`stat_media`.

    A remote URI is read whole into memory (at most ``max_bytes``; :func:`cope.media.read_bytes`)."""
    path = os.fspath(path)
    if "://" in path:
        return io.BytesIO(media.read_bytes(path, max_bytes))
    stat_media(path, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ExtractionError(f"{path}: cannot open ({e.strerror or type(e).__name__})") from None
    try:
        st = os.fstat(fd)
        problem = _not_regular(st.st_mode)
        if problem is None and max_bytes is not None and st.st_size > max_bytes:
            problem = f"larger than {max_bytes} bytes ({st.st_size} bytes)"
        if problem is not None:
            raise ExtractionError(f"{path}: {problem}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def local_media(path: str | os.PathLike[str], max_bytes: int | None = None) -> Iterator[str]:
    """A local path to read a media file from (decoders that want a file name: videos). A local file is checked
    (:func:`stat_media`) and given as it is; a remote one is downloaded to a temporary file, deleted on exit."""
    path = os.fspath(path)
    if "://" in path:
        with media.download(path, max_bytes) as local:
            yield str(local)
        return
    stat_media(path, max_bytes)
    yield path


def remote_fingerprint(uri: str) -> str:
    """A fingerprint of a remote file's version: ETag, Last-Modified, version id and size as the store announces
    them (one HEAD), else the hash of its bytes (up to 64 MiB; beyond that, its size). Never raises: an unreachable
    file gives ``"unreachable"``, a missing extra ``"remote-unavailable"``."""
    try:
        tags = media.version_tags(media.info(uri))
        if not tags.keys() & {"etag", "last_modified", "version", "md5", "digest"}:
            size = int(tags.get("size", 0) or 0)
            if size <= _FULL_HASH_LIMIT:
                tags["bytes"] = hashlib.blake2b(media.read_bytes(uri, _FULL_HASH_LIMIT), digest_size=16).hexdigest()
    except MissingExtraError:
        return "remote-unavailable"
    except ExtractionError:
        return "unreachable"
    return "remote:" + hashlib.blake2b(json.dumps(tags, sort_keys=True).encode(), digest_size=16).hexdigest()


def file_fingerprint(path: str) -> str:
    """A fingerprint of a file's bytes (whole up to 64 MiB; beyond, size, mtime, head and tail). Never raises and
    never blocks: a path that is not a readable regular file gives ``"missing"`` or ``"unreadable"``. Remote files:
    :func:`remote_fingerprint`."""
    if "://" in path:
        return remote_fingerprint(path) if media.is_remote(path) else "unsupported"
    st, problem = _stat_problem(path)
    if st is None:
        return "missing"
    if problem is not None:
        return "unreadable"
    h = hashlib.blake2b(digest_size=16)
    try:
        with open_media(path) as f:
            size = os.fstat(f.fileno()).st_size
            h.update(str(size).encode())
            if size <= _FULL_HASH_LIMIT:
                while block := f.read(1 << 20):
                    h.update(block)
            else:
                h.update(str(st.st_mtime_ns).encode())
                h.update(f.read(_EDGE))
                f.seek(size - _EDGE)
                h.update(f.read(_EDGE))
    except (ExtractionError, OSError):
        return "unreadable"
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

"""Remote media: ``http(s)://`` and object-store URIs (``s3://``, ``gs://``, ``az://``) read through fsspec.

Needs the ``remote`` extra (``pip install 'cope[remote]'``: fsspec with aiohttp and s3fs; add gcsfs for gs://, adlfs for
az://); without it a
remote URI fails with a :class:`~cope.errors.MissingExtraError` naming the extra.

Every remote read is bounded (:class:`RemoteOptions`, set for the process with :func:`configure`):

* **timeouts**: ``timeout_s`` for connecting and for each wait on data (HTTP headers, each read), and
  ``total_timeout_s`` for one download in all;
* **retries**: ``retries`` more attempts after a timeout, a connection error or an HTTP 408/425/429/5xx, waiting
  ``backoff_s`` (doubling, with jitter) in between; a 404, a 403 or a file over the size cap fails at once;
* **per-host concurrency**: at most ``per_host`` requests in flight to one host (or bucket) from this process;
* **size cap**: the caller's ``max_bytes`` (``ExtractOptions.max_image_bytes`` / ``max_video_bytes``), checked
  against the announced size before reading and while reading.

A failure is an :class:`~cope.errors.ExtractionError` ``"<uri>: <reason>"`` (``timeout (no data within 5 s, 3
attempts)``, ``HTTP 404 (not found)``, ``larger than N bytes (M bytes)``): the record lands in the errors table and
the job carries on. Pictures are read into memory; videos are downloaded to a temporary file for decoding
(:func:`download`) and deleted afterwards. Object-store credentials and endpoints come from the usual places (the
environment, ``~/.aws``, fsspec's ``FSSPEC_S3_ENDPOINT_URL``...) or from ``RemoteOptions.storage_options``.

>>> is_remote("https://cdn.example.com/a.jpg"), is_remote("s3://bucket/a.jpg"), is_remote("/data/a.jpg")
(True, True, False)
>>> host_key("https://cdn.example.com:8443/a/b.jpg?x=1")
'https://cdn.example.com:8443'
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from cope.errors import ExtractionError, MissingExtraError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: URI scheme -> fsspec protocol
SCHEMES: dict[str, str] = {"http": "http", "https": "http", "s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs",
                           "az": "abfs", "abfs": "abfs", "abfss": "abfs"}
#: fsspec protocol -> the package that implements it (all in the ``remote`` extra)
PACKAGES: dict[str, str] = {"http": "aiohttp", "s3": "s3fs", "gcs": "gcsfs", "abfs": "adlfs"}
_CHUNK = 1 << 20


class RemoteOptions(BaseModel):
    """Bounds on remote reads (see the module's docstring). ``storage_options``: fsspec options per protocol
    (``{"s3": {"endpoint_url": "http://127.0.0.1:9000"}}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(default=30.0, gt=0, le=3600, description="seconds a remote request may wait for a "
                             "connection or for data")
    total_timeout_s: float = Field(default=900.0, gt=0, description="seconds one remote download may take in all")
    retries: int = Field(default=2, ge=0, le=10, description="retries of a remote request after a timeout, a "
                         "connection error or an HTTP 408/425/429/5xx")
    backoff_s: float = Field(default=0.5, ge=0, le=60, description="wait before the first retry (doubles each "
                             "time, with jitter)")
    per_host: int = Field(default=8, ge=1, le=1024, description="remote requests in flight per host (or bucket)")
    storage_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="fsspec options per "
                                                       "protocol (http, s3, gcs, abfs)")


_lock = threading.Lock()
_options = RemoteOptions()
_slots: dict[str, threading.BoundedSemaphore] = {}
_filesystems: dict[str, Any] = {}


def configure(options: RemoteOptions | None = None, **changes: Any) -> RemoteOptions:
    """Set the remote options of this process (``configure(timeout_s=5)`` changes one); returns them."""
    global _options
    new = (options or _options).model_copy(update=changes) if changes else (options or RemoteOptions())
    new = RemoteOptions.model_validate(new.model_dump())
    with _lock:
        if new != _options:
            _filesystems.clear()
            _slots.clear()
        _options = new
    return new


def current_options() -> RemoteOptions:
    return _options


def scheme(uri: str) -> str:
    return uri.partition("://")[0].lower() if "://" in uri else ""


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` is a URI this module reads (``http(s)``, ``s3``, ``gs``, ``az``...)."""
    return scheme(os.fspath(uri)) in SCHEMES


def host_key(uri: str) -> str:
    """What the per-host limit counts on: scheme and host (the bucket for object stores)."""
    parts = urlsplit(uri)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def require(uri: str) -> str:
    """The fsspec protocol of ``uri``; :class:`MissingExtraError` naming the extra when its package is missing,
    :class:`ExtractionError` for a scheme cope does not read."""
    s = scheme(uri)
    protocol = SCHEMES.get(s)
    if protocol is None:
        raise ExtractionError(f"{uri}: unsupported URI scheme {s + '://'!r}; cope reads local files, "
                              f"http(s)://, s3://, gs:// and az://")
    missing = [m for m in ("fsspec", PACKAGES[protocol]) if importlib.util.find_spec(m) is None]
    if missing:
        extra = f" {PACKAGES[protocol]}" if protocol in ("gcs", "abfs") else ""  # not in the extra: see pyproject
        raise MissingExtraError(f"reading {s}:// media needs the 'remote' extra: pip install 'cope[remote]'{extra} "
                                f"(missing: {', '.join(missing)})")
    return protocol


def _filesystem(protocol: str) -> Any:
    opts = _options
    with _lock:
        fs = _filesystems.get(protocol)
        if fs is not None:
            return fs
    import fsspec

    kwargs: dict[str, Any] = dict(opts.storage_options.get(protocol, {}))
    t = opts.timeout_s
    if protocol == "http":
        import aiohttp

        client = dict(kwargs.pop("client_kwargs", {}))
        client.setdefault("timeout", aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t))
        kwargs["client_kwargs"] = client
    elif protocol == "s3":
        config = dict(kwargs.pop("config_kwargs", {}))
        config.setdefault("connect_timeout", t)
        config.setdefault("read_timeout", t)
        config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})  # cope retries, with its own backoff
        kwargs["config_kwargs"] = config
    elif protocol == "gcs":
        kwargs.setdefault("requests_timeout", t)
    fs = fsspec.filesystem(protocol, skip_instance_cache=True, **kwargs)
    with _lock:
        return _filesystems.setdefault(protocol, fs)


@contextlib.contextmanager
def _host_slot(uri: str) -> Iterator[None]:
    key = host_key(uri)
    with _lock:
        slot = _slots.get(key)
        if slot is None:
            slot = _slots[key] = threading.BoundedSemaphore(_options.per_host)
    with slot:
        yield


class _TooLarge(Exception):
    pass


class _Timeout(Exception):
    pass


def _status(e: BaseException) -> int | None:
    status = getattr(e, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(e, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def _reason(e: BaseException, uri: str, opts: RemoteOptions) -> tuple[str, bool]:
    """A one-line reason for a failed remote read, and whether another attempt may succeed."""
    if isinstance(e, _TooLarge):
        return str(e), False
    if isinstance(e, _Timeout):
        return str(e), False
    if isinstance(e, FileNotFoundError) and e.__cause__ is not None:  # fsspec's HTTP info wraps what went wrong
        return _reason(e.__cause__, uri, opts)
    names = {c.__name__ for c in type(e).__mro__}
    if isinstance(e, TimeoutError) or any("Timeout" in n for n in names):
        return f"timeout (no answer within {opts.timeout_s:g} s)", True
    status = _status(e)
    if isinstance(e, FileNotFoundError) or status == 404:
        return ("HTTP 404 (not found)" if scheme(uri) in ("http", "https") else "not found"), False
    if status is not None:
        message = getattr(e, "message", "") or ""
        return f"HTTP {status}{' ' + str(message) if message else ''}", status in (408, 425, 429) or status >= 500
    if isinstance(e, PermissionError):
        return f"access denied ({e})", False
    if isinstance(e, (ConnectionError, OSError)) or "ClientConnectionError" in names or "ClientError" in names:
        text = str(e) or type(e).__name__
        return f"connection failed ({text})", True
    return f"{type(e).__name__}: {e}", False


def _attempts(uri: str, what: Callable[[], T]) -> T:
    """Run ``what`` under the host's concurrency limit, retrying transient failures with backoff."""
    opts = _options
    tries = opts.retries + 1
    for attempt in range(tries):
        try:
            with _host_slot(uri):
                return what()
        except (ExtractionError, MissingExtraError):
            raise
        except Exception as e:
            reason, transient = _reason(e, uri, opts)
            last = attempt == tries - 1
            if not transient or last:
                note = f", {attempt + 1} attempts" if attempt else ""
                if note and reason.endswith(")"):
                    reason = reason[:-1] + note + ")"
                elif note:
                    reason += f" ({attempt + 1} attempts)"
                raise ExtractionError(f"{uri}: {reason}") from None
            wait = min(opts.backoff_s * 2**attempt, 30.0) * random.uniform(0.5, 1.0)
            logger.debug("%s: %s; retrying in %.2f s", uri, reason, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def info(uri: str) -> dict[str, Any]:
    """What the store says about ``uri`` without reading it (an HTTP HEAD, an object's metadata): size, ETag,
    Last-Modified... Raises :class:`ExtractionError` with the reason."""
    protocol = require(uri)

    def head() -> dict[str, Any]:
        fs = _filesystem(protocol)
        if getattr(fs, "async_impl", False):
            from fsspec.asyn import sync

            # a backstop: the client's own timeouts end each request sooner (HTTP info may try HEAD, then GET)
            return dict(sync(fs.loop, fs._info, uri, timeout=3 * _options.timeout_s + 1))
        return dict(fs.info(uri))

    return _attempts(uri, head)


#: info keys that change when an object changes (compared lower-case, without '-' and '_')
_VERSION_KEYS = {"etag": "etag", "lastmodified": "last_modified", "mtime": "last_modified",
                 "updated": "last_modified", "versionid": "version", "generation": "version", "contentmd5": "md5",
                 "md5hash": "md5", "digest": "digest", "size": "size"}


def version_tags(meta: dict[str, Any]) -> dict[str, str]:
    """The parts of :func:`info` that identify a version of the object (ETag, Last-Modified, version, size).

    >>> version_tags({"size": 10, "ETag": '"ab"', "Last-Modified": "Tue", "mimetype": "image/png"})
    {'size': '10', 'etag': '"ab"', 'last_modified': 'Tue'}
    """
    out: dict[str, str] = {}
    for key, value in meta.items():
        name = _VERSION_KEYS.get(key.lower().replace("-", "").replace("_", ""))
        if name and value not in (None, ""):
            out[name] = str(value)
    return out


def _open(uri: str, protocol: str) -> BinaryIO:
    fs = _filesystem(protocol)
    if protocol == "http":
        # block_size=0: one streaming GET (no ranges needed); size=1 skips fsspec's HEAD (the GET tells the size)
        return fs.open(uri, "rb", block_size=0, size=1)
    return fs.open(uri, "rb", block_size=4 * _CHUNK)


def _announced_size(f: Any) -> int | None:
    response = getattr(f, "r", None)  # fsspec's HTTPStreamFile: the aiohttp response
    if response is not None:
        length = getattr(response, "content_length", None)
        return int(length) if length is not None else None
    size = getattr(f, "size", None)
    return int(size) if isinstance(size, int) else None


def _copy(uri: str, protocol: str, sink: Callable[[bytes], Any], max_bytes: int | None) -> int:
    """Stream ``uri`` into ``sink``; the byte count. Enforces the size cap and the total deadline."""
    deadline = time.monotonic() + _options.total_timeout_s
    with _open(uri, protocol) as f:
        size = _announced_size(f)
        if max_bytes is not None and size is not None and size > max_bytes:
            raise _TooLarge(f"larger than {max_bytes} bytes ({size} bytes)")
        n = 0
        while chunk := f.read(_CHUNK):
            n += len(chunk)
            if max_bytes is not None and n > max_bytes:
                raise _TooLarge(f"larger than {max_bytes} bytes (stopped reading at {n} bytes)")
            if time.monotonic() > deadline:
                raise _Timeout(f"timeout (the download took more than {_options.total_timeout_s:g} s)")
            sink(chunk)
    return n


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a remote file (at most ``max_bytes``). Raises :class:`ExtractionError` with the reason."""
    protocol = require(uri)

    def fetch() -> bytes:
        parts: list[bytes] = []
        _copy(uri, protocol, parts.append, max_bytes)
        return b"".join(parts)

    return _attempts(uri, fetch)


@contextlib.contextmanager
def download(uri: str, max_bytes: int | None = None) -> Iterator[Path]:
    """A remote file downloaded to a temporary file (``$COPE_TMPDIR`` or the system's), deleted on exit."""
    protocol = require(uri)
    suffix = Path(urlsplit(uri).path).suffix[:16]
    fd, name = tempfile.mkstemp(prefix="cope-", suffix=suffix, dir=os.environ.get("COPE_TMPDIR") or None)
    os.close(fd)
    path = Path(name)
    try:
        def fetch() -> None:
            with path.open("wb") as out:
                _copy(uri, protocol, out.write, max_bytes)

        _attempts(uri, fetch)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()

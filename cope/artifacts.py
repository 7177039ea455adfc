"""Folders a table's pipeline depends on (trained heads, a fitted projection), named by the fingerprint of their
contents: copied into the database folder so that the table is usable from any working directory, and found again
there or at the absolute path they came from, always checked against the fingerprint.

>>> kind = ArtifactKind("heads", "_cope_heads", ("heads.safetensors", "config.json"), "written by `cope train`")
>>> locate(kind, "f00", None, None)
Traceback (most recent call last):
...
cope.errors.InputNotFoundError: heads f00 not found (looked in nowhere); copy the folder written by `cope train` ...
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cope.errors import InputNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArtifactKind:
    """What kind of folder: its name in messages, its subfolder of the database, its files (the last one a JSON
    config holding ``"fingerprint"``) and how a user makes one."""

    name: str
    folder: str  # inside a LanceDB folder; LanceDB only lists *.lance folders as tables
    files: tuple[str, ...]
    made_by: str

    @property
    def config(self) -> str:
        return self.files[-1]


def _local(db: str | os.PathLike[str] | None) -> Path | None:
    if db is None or "://" in str(db):
        return None
    return Path(db)


def fingerprint_at(kind: ArtifactKind, folder: Path) -> str | None:
    """The fingerprint a folder's config declares (None: no such folder or config)."""
    try:
        return json.loads((folder / kind.config).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def install(kind: ArtifactKind, fingerprint: str, uri: str | None, db: str | os.PathLike[str]) -> None:
    """Copy the folder at ``uri`` into ``<db>/<kind.folder>/<fingerprint>/`` (local databases; idempotent; atomic:
    readers see the whole folder or none)."""
    root = _local(db)
    if root is None or uri is None:
        logger.info("%s %s is referenced by %s (not copied into %s)", kind.name, fingerprint, uri, db)
        return
    target = root / kind.folder / fingerprint
    if fingerprint_at(kind, target) == fingerprint:
        return
    tmp = target.with_name(f".{fingerprint}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name in kind.files:
        shutil.copyfile(Path(uri) / name, tmp / name)
    try:
        tmp.rename(target)
    except OSError:  # another process installed it first
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("copied %s %s into %s", kind.name, fingerprint, target)


def locate(kind: ArtifactKind, fingerprint: str, uri: str | None, db: str | os.PathLike[str] | None) -> Path:
    """The folder holding this artifact: the database's copy, else ``uri``, checked against the fingerprint (the
    contents are verified again when loaded)."""
    candidates = []
    root = _local(db)
    if root is not None:
        candidates.append(root / kind.folder / fingerprint)
    if uri:
        candidates.append(Path(uri))
    for folder in candidates:
        if fingerprint_at(kind, folder) == fingerprint and all((folder / f).is_file() for f in kind.files):
            return folder
    raise InputNotFoundError(
        f"{kind.name} {fingerprint} not found (looked in {', '.join(map(str, candidates)) or 'nowhere'}); copy the "
        f"folder {kind.made_by} to {candidates[0] if candidates else '<db>/' + kind.folder + '/' + fingerprint}"
    )

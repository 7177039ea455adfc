"""Heads checkpoints as part of a table's pipeline: named by fingerprint, copied into the database folder, found
again from any working directory.

>>> ref = heads_ref("heads/")  # doctest: +SKIP
>>> install_heads(ref, "./cope.lancedb")  # -> ./cope.lancedb/_cope_heads/<fingerprint>/  # doctest: +SKIP
>>> locate_heads(ref, "./cope.lancedb")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from cope.errors import InputNotFoundError
from cope.heads.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_heads_config, resolve_checkpoint
from cope.pipeline import HeadsRef

logger = logging.getLogger(__name__)

HEADS_DIR = "_cope_heads"  # inside a LanceDB folder; LanceDB only lists *.lance folders as tables


def heads_ref(path: str | os.PathLike[str], default_domain: str | None = None) -> HeadsRef:
    """Describe a checkpoint folder (reads its config only, not the weights)."""
    config, fp, _ = read_heads_config(path)
    if not fp:
        raise InputNotFoundError(f"{path}: the heads config has no fingerprint; save the heads with `cope train`")
    if default_domain is not None and default_domain not in config.domains:
        raise ValueError(f"--default-domain {default_domain!r} has no head; the heads have {config.domains}")
    folder = resolve_checkpoint(path)[0].parent.resolve()
    return HeadsRef(fingerprint=fp, base_tag=config.base_model_tag, dim=config.dim, domains=tuple(config.domains),
                    default_domain=default_domain or config.default_domain, uri=str(folder))


def _local(db: str | os.PathLike[str] | None) -> Path | None:
    if db is None or "://" in str(db):
        return None
    return Path(db)


def install_heads(ref: HeadsRef, db: str | os.PathLike[str]) -> None:
    """Copy the checkpoint into ``<db>/_cope_heads/<fingerprint>/`` (local databases; idempotent)."""
    root = _local(db)
    if root is None or ref.uri is None:
        logger.info("heads %s are referenced by %s (not copied into %s)", ref.fingerprint, ref.uri, db)
        return
    target = root / HEADS_DIR / ref.fingerprint
    if _fingerprint_at(target) == ref.fingerprint:
        return
    tmp = target.with_name(f".{ref.fingerprint}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copyfile(Path(ref.uri) / name, tmp / name)
    try:
        tmp.rename(target)  # atomic: readers see the whole checkpoint or none
    except OSError:  # another process installed it first
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("copied heads %s into %s", ref.fingerprint, target)


def _fingerprint_at(folder: Path) -> str | None:
    try:
        return json.loads((folder / CONFIG_FILE).read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def locate_heads(ref: HeadsRef, db: str | os.PathLike[str] | None) -> Path:
    """The folder holding these heads: the database's copy, else the recorded absolute path, checked against the
    fingerprint (the weights are verified again when loaded)."""
    candidates = []
    root = _local(db)
    if root is not None:
        candidates.append(root / HEADS_DIR / ref.fingerprint)
    if ref.uri:
        candidates.append(Path(ref.uri))
    for folder in candidates:
        if _fingerprint_at(folder) == ref.fingerprint and (folder / WEIGHTS_FILE).is_file():
            return folder
    raise InputNotFoundError(
        f"heads {ref.fingerprint} not found (looked in {', '.join(map(str, candidates)) or 'nowhere'}); copy the "
        f"checkpoint folder written by `cope train` to {candidates[0] if candidates else '<db>/' + HEADS_DIR}"
    )

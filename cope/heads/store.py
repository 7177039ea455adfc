"""Heads checkpoints as part of a table's pipeline: named by fingerprint, copied into the database folder, found
again from any working directory.

>>> ref = heads_ref("heads/")  # doctest: +SKIP
>>> install_heads(ref, "./cope.lancedb")  # -> ./cope.lancedb/_cope_heads/<fingerprint>/  # doctest: +SKIP
>>> locate_heads(ref, "./cope.lancedb")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cope.artifacts import ArtifactKind, install, locate
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


#: trained heads as a folder a table depends on
HEADS = ArtifactKind("heads", HEADS_DIR, (WEIGHTS_FILE, CONFIG_FILE), "written by `cope train`")


def install_heads(ref: HeadsRef, db: str | os.PathLike[str]) -> None:
    """Copy the checkpoint into ``<db>/_cope_heads/<fingerprint>/`` (local databases; idempotent)."""
    install(HEADS, ref.fingerprint, ref.uri, db)


def locate_heads(ref: HeadsRef, db: str | os.PathLike[str] | None) -> Path:
    """The folder holding these heads: the database's copy, else the recorded absolute path, checked against the
    fingerprint (the weights are verified again when loaded)."""
    return locate(HEADS, ref.fingerprint, ref.uri, db)

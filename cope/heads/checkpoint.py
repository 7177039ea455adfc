"""Heads checkpoints: a folder with ``heads.safetensors`` (weights) and ``config.json`` (what they are).

The fingerprint is a hash of the weights; with the base model tag it names the space the heads produce
(``<base tag>;heads=<fingerprint>``). Loading refuses heads trained on another base model or dimension.

>>> heads = load_heads("ckpt/", model_tag=store.model_tag, dim=store.dim)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from cope.errors import HeadsMismatchError, InputNotFoundError, UsageError
from cope.heads.model import HEADS_FORMAT, CopeHeads, HeadsConfig

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "heads.safetensors"
CONFIG_FILE = "config.json"


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """12 hex digits of sha256 over tensor names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:12]


def heads_model_tag(base_model_tag: str, heads_fingerprint: str) -> str:
    """Model tag of vectors made by these heads on top of ``base_model_tag``."""
    return f"{base_model_tag};heads={heads_fingerprint}"


def save_heads(heads: CopeHeads, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``heads.safetensors`` and ``config.json`` into the folder ``out`` (created); return the folder.

    ``extra`` (training settings, metrics...) goes into ``config.json`` under ``"training"``.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix == ".safetensors":
        raise ValueError(f"--out is a folder for the checkpoint, not a file: use {out.with_suffix('')}")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    fp = fingerprint(state)
    heads.fingerprint = fp
    config = heads.config.model_dump()
    save_file(state, str(out / WEIGHTS_FILE), metadata={
        "format": HEADS_FORMAT, "base_model_tag": heads.config.base_model_tag,
        "input_dim": str(heads.config.input_dim), "dim": str(heads.config.dim), "fingerprint": fp,
    })
    payload = {"heads": config, "fingerprint": fp, "model_tag": heads_model_tag(heads.config.base_model_tag, fp),
               "training": extra or {}}
    (out / CONFIG_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    logger.info("saved heads %s (%s -> %d-d) to %s", fp, heads.config.base_model_tag, heads.config.dim, out)
    return out


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    folder = path.parent if path.suffix == ".safetensors" or path.name == CONFIG_FILE else path
    if folder is path and path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file, not a heads checkpoint folder (pickles and other formats are never "
                         "loaded); pass the folder written by `cope train --out FOLDER`")
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.is_file() or not config.is_file():  # regular files only: a FIFO would block the read
        raise InputNotFoundError(
            f"no heads checkpoint at {path}: expected {WEIGHTS_FILE} and {CONFIG_FILE} in {folder} "
            "(written by `cope train --out FOLDER`)"
        )
    return weights, config


def _not_heads(where: Path, why: str) -> UsageError:
    return UsageError(f"{where} is not a cope heads checkpoint ({why}); pass a folder written by `cope train --out`")


def read_heads_config(path: str | Path) -> tuple[HeadsConfig, str, dict[str, Any]]:
    """(config, fingerprint, training info) of a checkpoint, without loading the weights. A config that is not one
    (unreadable, not JSON, edited into an invalid one) is refused with :class:`UsageError`."""
    _, config_path = resolve_checkpoint(path)
    try:
        payload = json.loads(config_path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _not_heads(config_path, f"{type(e).__name__}: {e}") from None
    heads = payload.get("heads") if isinstance(payload, dict) else None
    if not isinstance(heads, dict) or heads.get("format") != HEADS_FORMAT:
        raise _not_heads(config_path, f"no 'heads' object of format {HEADS_FORMAT!r}")
    try:
        config = HeadsConfig.model_validate(heads)
    except ValidationError as e:
        why = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise _not_heads(config_path, f"invalid 'heads': {why}") from None
    fp, training = payload.get("fingerprint", ""), payload.get("training", {})
    if not isinstance(fp, str) or not isinstance(training, dict):
        raise _not_heads(config_path, "'fingerprint' must be a string and 'training' an object")
    return config, fp, training


def check_compatible(config: HeadsConfig, model_tag: str | None, dim: int | None, where: str = "the table") -> None:
    """Raise :class:`HeadsMismatchError` unless the heads were trained on ``model_tag`` vectors of size ``dim``."""
    if (model_tag is not None and model_tag != config.base_model_tag) or (dim is not None and dim != config.input_dim):
        raise HeadsMismatchError(
            f"these heads were trained on vectors of model {config.base_model_tag!r} (dim {config.input_dim}), "
            f"but {where} holds vectors of {model_tag!r} (dim {dim}). Train heads on this table "
            "(`cope train --db DIR --table TABLE --out CKPT`) or embed with the heads' base model."
        )


def load_heads(
    path: str | Path, *, model_tag: str | None = None, dim: int | None = None, device: str = "cpu"
) -> CopeHeads:
    """Load heads from a checkpoint folder (or its ``heads.safetensors``), in eval mode.

    With ``model_tag`` / ``dim`` given, refuse heads trained on another base model or dimension. The loaded
    module has ``.fingerprint``; the weights are verified against the fingerprint in ``config.json``.
    """
    from safetensors.torch import load_file

    weights_path, _ = resolve_checkpoint(path)
    config, fp, _ = read_heads_config(path)
    check_compatible(config, model_tag, dim)
    try:
        state = load_file(str(weights_path), device="cpu")  # safetensors: never unpickles anything
    except Exception as e:  # SafetensorError (a pickle, a truncated file), OSError
        raise _not_heads(weights_path, f"not a safetensors file: {type(e).__name__}: {e}; pickles are never "
                         "loaded") from None
    actual = fingerprint(state)
    if fp and actual != fp:
        raise HeadsMismatchError(f"{weights_path} does not match its config.json (fingerprint {actual} != {fp}); "
                                 "the checkpoint was modified or mixed from two runs: train again")
    heads = CopeHeads(config)
    expected = heads.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise HeadsMismatchError(
            f"{weights_path}: the weights do not fit config.json (missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shapes {wrong[:3]}); the checkpoint was modified or mixed from two runs: train again"
        )
    heads.load_state_dict(state, strict=True)
    heads.fingerprint = actual
    return heads.to(device).eval()

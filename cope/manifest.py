"""Stream records out of JSONL, CSV and Parquet manifests; a bad row is reported with file, line and field."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cope.records import DOMAINS, RECORD_ADAPTER, Record

logger = logging.getLogger(__name__)

_JSON_FIELDS = ("images", "attributes", "snapshots", "asr", "metadata")
_PATH_FIELDS = ("uri", "recording")


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row: a valid record, or the reason it is not one."""

    source: str
    line: int
    record: Record | None = None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        if loc and loc[0] in DOMAINS:  # the discriminator tag pydantic puts first
            loc = loc[1:]
        field = ".".join(loc) or "domain" if e["type"].startswith("union_tag") else ".".join(loc) or "<row>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            msg = f"unknown domain {e['input'].get('domain')!r}; known domains: {', '.join(DOMAINS)}"
        elif e["type"] == "union_tag_not_found":
            msg = f"missing 'domain' (one of {', '.join(DOMAINS)}); or pass a default domain for the manifest"
        parts.append(f"field '{field}': {msg}")
    return "; ".join(parts)


def _resolve(path: str, base: Path) -> str:
    path = path.removeprefix("file://")
    if "://" in path:
        return path  # left to the extractor, which says what is supported
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p))


def _prepare(raw: dict[str, Any], base: Path, default_domain: str | None, from_csv: bool) -> dict[str, Any]:
    row = {k: v for k, v in raw.items() if not (v is None or (from_csv and v == ""))}
    if from_csv:
        for key in _JSON_FIELDS:
            val = row.get(key)
            if isinstance(val, str):
                s = val.strip()
                if s[:1] in "[{":
                    row[key] = json.loads(s)
                elif key == "images":
                    row[key] = [x.strip() for x in s.split(";") if x.strip()]
    if default_domain and "domain" not in row:
        row["domain"] = default_domain
    for key in _PATH_FIELDS:
        if isinstance(row.get(key), str):
            row[key] = _resolve(row[key], base)
    if isinstance(row.get("images"), list):
        row["images"] = [_resolve(str(x), base) for x in row["images"]]
    if isinstance(row.get("snapshots"), list):
        row["snapshots"] = [
            {**s, "uri": _resolve(str(s["uri"]), base)} if isinstance(s, dict) and "uri" in s else s
            for s in row["snapshots"]
        ]
    return row


def _raw_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, dict) or (line, error message); never loads the whole file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with path.open(encoding="utf-8") as f:
            for n, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    yield n, f"invalid JSON: {e.msg} at column {e.colno}"
                    continue
                yield (n, obj) if isinstance(obj, dict) else (n, "a row must be a JSON object")
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                if None in row:
                    yield reader.line_num, f"more cells than the {len(reader.fieldnames or [])} header columns"
                    continue
                yield reader.line_num, dict(row)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for obj in batch.to_pylist():
                n += 1
                yield n, obj
    else:
        raise ValueError(f"{path}: unsupported manifest format {suffix!r}; use .jsonl, .csv, .tsv or .parquet")


def read_manifest(path: str | Path, default_domain: str | None = None) -> Iterator[ManifestRow]:
    """Yield one :class:`ManifestRow` per data row of a manifest, streaming.

    >>> for row in read_manifest("catalog.jsonl"):  # doctest: +SKIP
    ...     print(row.where, row.record or row.error)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    base = path.resolve().parent
    from_csv = path.suffix.lower() in (".csv", ".tsv")
    for line, raw in _raw_rows(path):
        if isinstance(raw, str):
            yield ManifestRow(str(path), line, error=raw)
            continue
        try:
            record = RECORD_ADAPTER.validate_python(_prepare(raw, base, default_domain, from_csv))
        except json.JSONDecodeError as e:
            yield ManifestRow(str(path), line, error=f"a JSON cell does not parse: {e.msg}")
        except ValidationError as e:
            yield ManifestRow(str(path), line, error=format_validation_error(e))
        else:
            yield ManifestRow(str(path), line, record=record)

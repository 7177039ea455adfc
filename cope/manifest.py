"""Stream records out of catalogs: manifests (JSONL, JSON arrays, CSV/TSV, Parquet), folders and globs; a bad row is
reported with file, line and field. See ``docs/ingest.md``.

**Inputs** (:func:`expand_inputs`): a manifest file; a glob (``data/*.jsonl``); a folder, which stands for the
manifests at its top level, or, when it holds none, for the pictures and videos under it (one item per file: an
image record per picture, a video record per video, the id being the path relative to the folder).

**Columns** (:func:`plan_columns`): a record field comes from the column of its own name, else from an explicit
mapping (``--column item_id=sku``, or ``product.title=name`` for one domain), else from the one column whose name is a
known alias of the field (:data:`ALIASES`: ``id``, ``sku``, ``name``, ``image_path``, ``caption``...). Two aliases of
one field in one file are never guessed between: the row is refused with the mapping that would settle it. Columns a
record does not know are kept in its ``metadata``.

**Values**: empty CSV cells and nulls are absent; a list field (``images``) may be a JSON array or a string delimited
by ``|``, ``;`` or ``,``; relative media paths are resolved against ``media_root`` when given (a folder, or a URL
prefix such as ``s3://bucket/catalog/``), else against the manifest's folder; ``http(s)://``, ``s3://``, ``gs://``
and ``az://`` URIs are kept as they are (read by :mod:`cope.media`).

Reading streams (a manifest is never loaded whole). :func:`check_inputs` looks at the first rows of each input
before a run and raises one :class:`~cope.errors.UsageError` for what no row can fix (a missing id or media column,
an ambiguous alias, a mapping to no column, media paths relative to another folder), listing the columns found and
the mapping that would fix it.

>>> plan_columns("image", ["sku", "name", "desc", "image_path"], source="catalog.csv").problems[0]
"no 'image_id' column in catalog.csv (columns: sku, name, desc, image_path); map one: --column image_id=sku"
>>> plan_columns("product", ["sku", "name", "desc", "image_path"]).rename
{'sku': 'item_id', 'name': 'title', 'desc': 'description', 'image_path': 'images'}
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cope.errors import InputNotFoundError, UsageError
from cope.media import is_remote, require
from cope.records import DOMAINS, RECORD_ADAPTER, ImageRecord, LiveStream, ProductPage, Record, VideoRecord

logger = logging.getLogger(__name__)

#: manifest file suffixes (``.json``: a JSON array of objects, or JSON lines)
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
#: files a folder catalog embeds as pictures (image records) and as videos (video records)
PICTURE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg"})

_MODELS: dict[str, type[BaseModel]] = {"product": ProductPage, "image": ImageRecord, "video": VideoRecord,
                                       "live": LiveStream}
#: every domain's fields (``domain`` first, ``metadata`` last)
FIELDS: dict[str, tuple[str, ...]] = {
    d: ("domain", *(f for f in m.model_fields if f not in ("domain", "metadata")), "metadata")
    for d, m in _MODELS.items()
}
ID_FIELDS = {"product": "item_id", "image": "image_id", "video": "video_id", "live": "live_id"}

#: Column names recognised without a flag, per domain and field (compared lower-case, with ``-``, ``.`` and spaces
#: read as ``_``). A column named like the field itself always wins; an explicit mapping wins over everything.
ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "product": {
        "item_id": ("id", "sku", "item", "itemid", "product_id", "productid"),
        "title": ("name", "product_name", "product_title"),
        "description": ("desc", "descr", "body", "details", "product_description", "long_description"),
        "attributes": ("attrs", "specs", "properties"),
        "images": ("image", "image_path", "image_paths", "image_url", "image_urls", "image_uri", "image_uris",
                   "img", "imgs", "picture", "pictures", "photo", "photos"),
    },
    "image": {
        "image_id": ("id", "img_id", "imageid", "file_id"),
        "uri": ("image", "image_path", "image_url", "image_uri", "img", "path", "url", "file", "filename",
                "file_name", "file_path", "filepath", "src"),
        "text": ("caption", "description", "desc", "alt", "alt_text", "title", "label"),
    },
    "video": {
        "video_id": ("id", "vid", "videoid"),
        "uri": ("video", "video_path", "video_url", "video_uri", "path", "url", "file", "filename", "file_name",
                "file_path", "filepath", "src"),
        "title": ("name",),
        "caption": ("text", "description", "desc"),
        "asr": ("transcript", "speech"),
    },
    "live": {
        "live_id": ("id", "stream_id", "room_id", "liveid"),
        "title": ("name",),
        "recording": ("video", "video_path", "video_url", "recording_path", "recording_url", "path", "url", "file"),
    },
}
LIST_FIELDS = ("images",)
_JSON_FIELDS = ("images", "attributes", "snapshots", "asr", "items", "metadata")
_PATH_FIELDS = ("uri", "recording")
_SAMPLE_ROWS = 50  # rows check_inputs looks at per input
_PLAN_CACHE = 256  # distinct column sets remembered per input


def _norm(name: str) -> str:
    return re.sub(r"[\s.\-]+", "_", str(name).strip().lower())


# -- options ----------------------------------------------------------------------------------------------------------
def _known_target(target: str) -> str | None:
    """Why ``target`` (``field`` or ``domain.field``) is not a field a column can be mapped to, or None."""
    domain, dot, name = target.rpartition(".")
    if dot and domain not in FIELDS:
        return f"unknown domain {domain!r} in --column {target}=...; domains: {', '.join(DOMAINS)}"
    fields = FIELDS[domain] if dot else tuple(dict.fromkeys(f for d in DOMAINS for f in FIELDS[d]))
    if name not in fields:
        return f"unknown field {name!r} in --column {target}=...; fields: {', '.join(fields)}"
    return None


def parse_columns(specs: Iterable[str]) -> dict[str, str]:
    """``["item_id=sku", "title=name"]`` -> ``{"item_id": "sku", "title": "name"}``; a malformed spec or an unknown
    field is a :class:`UsageError`.

    >>> parse_columns(["item_id=sku", "image.text = caption"])
    {'item_id': 'sku', 'image.text': 'caption'}
    """
    out: dict[str, str] = {}
    for spec in specs:
        target, eq, column = str(spec).partition("=")
        target, column = target.strip(), column.strip()
        if not eq or not target or not column:
            raise UsageError(f"--column {spec!r}: expected FIELD=NAME, e.g. --column item_id=sku")
        problem = _known_target(target)
        if problem:
            raise UsageError(problem)
        out[target] = column
    return out


def check_columns(columns: Mapping[str, str]) -> dict[str, str]:
    """A column mapping whose fields exist (``ValueError`` naming the known fields otherwise)."""
    for target, column in columns.items():
        problem = _known_target(target)
        if problem:
            raise ValueError(problem)
        if not str(column).strip():
            raise ValueError(f"empty column name for {target!r}")
    return dict(columns)


class ManifestOptions(BaseModel):
    """How manifests are read: a default domain, explicit column mappings and the folder media paths are relative to.

    >>> ManifestOptions(columns={"item_id": "sku"}).columns
    {'item_id': 'sku'}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_domain: str | None = Field(default=None, description="domain of rows that have no 'domain' column")
    columns: dict[str, str] = Field(default_factory=dict, description="record field -> manifest column")
    media_root: str | None = Field(default=None, description="folder or URL prefix relative media paths are "
                                   "resolved against (default: the manifest's folder)")

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, v: dict[str, str]) -> dict[str, str]:
        return check_columns(v)

    @field_validator("default_domain")
    @classmethod
    def _check_domain(cls, v: str | None) -> str | None:
        if v is not None and v not in DOMAINS:
            raise ValueError(f"unknown domain {v!r}; known domains: {', '.join(DOMAINS)}")
        return v


# -- column plans -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnPlan:
    """How the columns of one input become the fields of one domain."""

    domain: str
    rename: dict[str, str]  # column -> field
    problems: list[str] = field(default_factory=list)  # ambiguous aliases, missing required fields
    ambiguous: list[str] = field(default_factory=list)  # the problems that are ambiguities


def _find_column(name: str, columns: Sequence[str]) -> str | None:
    if name in columns:
        return name
    matches = [c for c in columns if _norm(c) == _norm(name)]
    return matches[0] if len(matches) == 1 else None


def _suggest(field_name: str, free: Sequence[str]) -> str:
    """A column to name in the fix of a missing field: one that looks like an id (or a path), else the first."""
    if not free:
        return "NAME"
    if field_name in ID_FIELDS.values():
        hints = {a for d in ALIASES.values() for f, al in d.items() if f in ID_FIELDS.values() for a in al}
        looks = [c for c in free if _norm(c) in hints or re.search(r"(^|_)(id|key|sku|code)$", _norm(c))]
    else:
        looks = [c for c in free if re.search(r"path|url|uri|file|image|video|src|photo", _norm(c))]
    return (looks or list(free))[0]


def plan_columns(domain: str, columns: Sequence[str], mapping: Mapping[str, str] | None = None,
                 source: str = "the manifest") -> ColumnPlan:
    """Which column gives which field of ``domain``: the field's own column, else an explicit ``mapping``
    (``{"item_id": "sku"}`` or ``{"product.item_id": "sku"}``), else the single alias column (:data:`ALIASES`).
    ``problems`` says what cannot be settled (two alias columns for one field; no column for a required field),
    each with the ``--column`` that fixes it."""
    columns = list(columns)
    fields = FIELDS[domain]
    mapping = mapping or {}
    wanted: dict[str, str] = {}
    for target, column in mapping.items():
        d, dot, name = target.rpartition(".")
        if (dot and d == domain) or (not dot and name in fields and name not in wanted):
            wanted[name] = column
    rename: dict[str, str] = {}
    for name, column in wanted.items():
        found = _find_column(column, columns)
        if found is not None and found not in rename:
            rename[found] = name
    taken = set(rename.values())
    problems: list[str] = []
    ambiguous: list[str] = []
    for name in fields:
        if name in taken or (name in columns and name not in rename):
            continue
        free = [c for c in columns if c not in rename and c not in fields]
        same = [c for c in free if _norm(c) == name]
        candidates = same or [c for c in free if _norm(c) in ALIASES.get(domain, {}).get(name, ())]
        if len(candidates) == 1:
            rename[candidates[0]] = name
            taken.add(name)
        elif len(candidates) > 1:
            listed = " and ".join(repr(c) for c in candidates)
            msg = (f"{listed} in {source} could each be '{name}' ({domain}); map one: "
                   + " or ".join(f"--column {name}={c}" for c in candidates))
            problems.append(msg)
            ambiguous.append(msg)
            taken.add(name)  # said once: as an ambiguity, not also as a missing column
    present = taken | {c for c in columns if c in fields}
    free = [c for c in columns if c not in rename and c not in fields]
    shown = ", ".join(columns) or "none"
    needed = [ID_FIELDS[domain]] + (["uri"] if domain in ("image", "video") else [])
    for name in needed:
        if name not in present:
            problems.append(f"no '{name}' column in {source} (columns: {shown}); map one: "
                            f"--column {name}={_suggest(name, free)}")
    if domain == "live" and not present & {"snapshots", "recording"}:
        problems.append(f"no 'recording' or 'snapshots' column in {source} (columns: {shown}); map one: "
                        f"--column recording={_suggest('recording', free)}")
    if domain == "product" and not present & {"title", "description", "images"}:
        problems.append(f"no 'title', 'description' or 'images' column in {source} (columns: {shown}); map one: "
                        f"--column title={_suggest('title', free)}")
    return ColumnPlan(domain, rename, problems, ambiguous)


# -- rows -------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestRow:
    """One manifest row: a valid record, or the reason it is not one. ``line`` 0: the row is a file of a folder
    catalog (``source`` is that file)."""

    source: str
    line: int
    record: Record | None = None
    error: str | None = None

    @property
    def where(self) -> str:
        return self.source if self.line == 0 else f"{self.source}:{self.line}"


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


def _is_url(path: str) -> bool:
    return "://" in path


def _resolve(path: str, base: str | Path) -> str:
    path = path.strip().removeprefix("file://")
    if _is_url(path):
        return path  # read by cope.media (or refused by it, saying what is supported)
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    if isinstance(base, str) and _is_url(base):
        rel = path.replace(os.sep, "/")
        while rel.startswith("./"):
            rel = rel[2:]
        return f"{base.rstrip('/')}/{rel}"
    return str(Path(base) / p)


def split_list(value: str) -> list[str]:
    """A list cell: a JSON array, or items delimited by ``|``, ``;`` or ``,`` (the first of these present; ``,`` only
    when every part looks like a file or a URL, so a path with a comma stays whole).

    >>> split_list("a.jpg|b.jpg"), split_list("a.jpg; b.jpg"), split_list("a.jpg,b.jpg"), split_list("red, blue.jpg")
    (['a.jpg', 'b.jpg'], ['a.jpg', 'b.jpg'], ['a.jpg', 'b.jpg'], ['red, blue.jpg'])
    """
    s = value.strip()
    if s.startswith("["):
        out = json.loads(s)
        return out if isinstance(out, list) else [out]
    for sep in ("|", ";", ","):
        if sep in s:
            parts = [x.strip() for x in s.split(sep) if x.strip()]
            if sep != "," or all(_is_url(x) or Path(x).suffix for x in parts):
                return parts
            break
    return [s] if s else []


class _Reader:
    """Turns raw rows of one input into records: domain, column plan, value cleaning, path resolution."""

    def __init__(self, source: str, options: ManifestOptions, base: str | Path, from_text: bool) -> None:
        self.source = source
        self.options = options
        self.base = base
        self.from_text = from_text  # CSV/TSV: every cell is a string, "" is absent
        self.plans: dict[tuple[str, tuple[str, ...]], ColumnPlan] = {}
        mapped = options.columns.get("domain")
        self.domain_column = mapped

    def domain_of(self, raw: Mapping[str, Any]) -> Any:
        if self.domain_column is not None:
            col = _find_column(self.domain_column, list(raw))
            if col is not None and raw.get(col) not in (None, ""):
                return raw[col]
        value = raw.get("domain")
        return self.options.default_domain if value in (None, "") else value

    def plan(self, domain: str, columns: Sequence[str]) -> ColumnPlan:
        key = (domain, tuple(columns))
        plan = self.plans.get(key)
        if plan is None:
            plan = plan_columns(domain, columns, self.options.columns, self.source)
            if len(self.plans) < _PLAN_CACHE:
                self.plans[key] = plan
        return plan

    def prepare(self, raw: Mapping[str, Any]) -> dict[str, Any] | str:
        """The row as record fields, or why it cannot be one."""
        row = {k: v for k, v in raw.items() if not (v is None or (self.from_text and v == ""))}
        domain = self.domain_of(raw)
        if isinstance(domain, str) and domain in FIELDS:
            plan = self.plan(domain, list(row))
            if plan.ambiguous:
                return "; ".join(plan.ambiguous)
            if plan.rename:
                displaced: dict[str, Any] = {}
                out: dict[str, Any] = {}
                targets = set(plan.rename.values())
                for k, v in row.items():
                    if k in plan.rename:
                        out[plan.rename[k]] = v
                    elif k in targets:  # a column named like a field that a mapping fills from another column
                        displaced[k] = v
                    else:
                        out[k] = v
                row = out
                if displaced:
                    row["metadata"] = {**displaced, **_as_dict(row.get("metadata"))}
            row["domain"] = domain
        elif domain is not None:
            row["domain"] = domain
        for key in _JSON_FIELDS:
            val = row.get(key)
            if isinstance(val, str):
                s = val.strip()
                if key in LIST_FIELDS:
                    row[key] = split_list(s)
                elif s[:1] in "[{":
                    row[key] = json.loads(s)
        if isinstance(row.get("attributes"), dict):
            row["attributes"] = {k: v for k, v in row["attributes"].items() if v is not None}
        for key in _PATH_FIELDS:
            if isinstance(row.get(key), str):
                row[key] = _resolve(row[key], self.base)
        if isinstance(row.get("images"), (list, tuple)):
            row["images"] = [_resolve(str(x), self.base) for x in row["images"] if x not in (None, "")]
        if isinstance(row.get("snapshots"), list):
            row["snapshots"] = [
                {**s, "uri": _resolve(str(s["uri"]), self.base)} if isinstance(s, dict) and "uri" in s else s
                for s in row["snapshots"]
            ]
        return row

    def rows(self, raw_rows: Iterable[tuple[int, dict[str, Any] | str]]) -> Iterator[ManifestRow]:
        for line, raw in raw_rows:
            if isinstance(raw, str):
                yield ManifestRow(self.source, line, error=raw)
                continue
            try:
                prepared = self.prepare(raw)
                if isinstance(prepared, str):
                    yield ManifestRow(self.source, line, error=prepared)
                    continue
                record = RECORD_ADAPTER.validate_python(prepared)
            except json.JSONDecodeError as e:
                yield ManifestRow(self.source, line, error=f"a JSON cell does not parse: {e.msg}")
            except ValidationError as e:
                yield ManifestRow(self.source, line, error=format_validation_error(e))
            else:
                yield ManifestRow(self.source, line, record=record)


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip().startswith("{"):
        return json.loads(value)
    return {}


# -- raw rows of each format ------------------------------------------------------------------------------------------
def _first_char(path: Path) -> str:
    with path.open(encoding="utf-8") as f:
        while chunk := f.read(4096):
            s = chunk.lstrip()
            if s:
                return s[0]
    return ""


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
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


_MAX_JSON_ROW = 64 << 20  # characters one object of a JSON array may take


def _json_array(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """The objects of a file holding one JSON array, streamed (never the whole file in memory), with the line each
    object starts on."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8") as f:
        buf, pos, line, eof = "", 0, 1, False

        def more(n: int = 1 << 20) -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            chunk = f.read(n)
            if not chunk:
                eof = True
                return False
            buf, pos = buf[pos:] + chunk, 0
            return True

        def skip_ws() -> None:
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or not more():
                    return

        skip_ws()
        if pos >= len(buf) or buf[pos] != "[":
            yield line, "a .json manifest must be a JSON array of objects or JSON lines"
            return
        pos += 1
        first = True
        while True:
            skip_ws()
            if pos >= len(buf):
                yield line, "invalid JSON: the array is not closed (file ends early)"
                return
            if buf[pos] == "]":
                return
            if not first:
                if buf[pos] != ",":
                    yield line, f"invalid JSON: expected ',' or ']' but found {buf[pos]!r}"
                    return
                pos += 1
                skip_ws()
            first = False
            start = line
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                    if not more(max(1 << 20, len(buf) - pos)):  # a number may go on in the next chunk
                        break
                except json.JSONDecodeError as e:
                    if len(buf) - pos > _MAX_JSON_ROW:
                        yield start, f"a row of more than {_MAX_JSON_ROW} characters"
                        return
                    if more(max(1 << 20, len(buf) - pos)):
                        continue
                    yield start + buf.count("\n", pos, e.pos), f"invalid JSON: {e.msg}"
                    return
            line += buf.count("\n", pos, end)
            pos = end
            yield (start, obj) if isinstance(obj, dict) else (start, "a row must be a JSON object")


def _raw_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, dict) or (line, error message); never loads the whole file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _json_lines(path)
    elif suffix == ".json":
        yield from (_json_array(path) if _first_char(path) == "[" else _json_lines(path))
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8-sig", newline="") as f:
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
        raise UsageError(f"{path}: unsupported manifest format {suffix!r}; use .jsonl, .json, .csv, .tsv or "
                         f".parquet, or a folder of pictures and videos")


def _header(path: Path) -> list[str] | None:
    """The columns of a CSV/TSV/Parquet file (None for JSON, whose rows name their own keys)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8-sig", newline="") as f:
            return next(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","), [])
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    return None


# -- folders ----------------------------------------------------------------------------------------------------------
def media_kind(path: str | Path) -> str | None:
    """``"picture"``, ``"video"`` or None, by the file's suffix."""
    suffix = Path(path).suffix.lower()
    return "picture" if suffix in PICTURE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def _walk_media(folder: Path) -> Iterator[Path]:
    """Pictures and videos under ``folder`` in a stable order, streamed; hidden entries and folder links skipped."""
    for top, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and media_kind(name):
                yield Path(top) / name


def _folder_domains(default_domain: str | None) -> dict[str, str]:
    if default_domain in ("image", "product"):
        return {"picture": default_domain}
    if default_domain in ("video", "live"):
        return {"video": default_domain}
    return {"picture": "image", "video": "video"}


def _folder_rows(folder: Path, options: ManifestOptions) -> Iterator[ManifestRow]:
    """One record per picture or video under ``folder``, keyed by its relative path."""
    domains = _folder_domains(options.default_domain)
    skipped = 0
    for file in _walk_media(folder):
        domain = domains.get(media_kind(file) or "")
        if domain is None:
            skipped += 1
            continue
        rel = file.relative_to(folder).as_posix()
        uri = str(file.absolute())
        raw: dict[str, Any] = {
            "product": {"item_id": rel, "images": [uri]},
            "image": {"image_id": rel, "uri": uri},
            "video": {"video_id": rel, "uri": uri},
            "live": {"live_id": rel, "recording": uri},
        }[domain]
        try:
            record = RECORD_ADAPTER.validate_python({"domain": domain, **raw})
        except ValidationError as e:
            yield ManifestRow(str(file), 0, error=format_validation_error(e))
        else:
            yield ManifestRow(str(file), 0, record=record)
    if skipped:
        kind = "videos" if "picture" in domains else "pictures"
        logger.warning("%s: skipped %d %s (the folder is read as --domain %s)", folder, skipped, kind,
                       options.default_domain)


def _manifests_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in MANIFEST_SUFFIXES)


# -- public API -------------------------------------------------------------------------------------------------------
def _options(options: ManifestOptions | None, default_domain: str | None, columns: Mapping[str, str] | None,
             media_root: str | os.PathLike[str] | None) -> ManifestOptions:
    if options is None:
        options = ManifestOptions()
    update: dict[str, Any] = {}
    if default_domain is not None:
        update["default_domain"] = default_domain
    if columns:
        update["columns"] = {**options.columns, **columns}
    if media_root is not None:
        update["media_root"] = os.fspath(media_root)
    return ManifestOptions.model_validate({**options.model_dump(), **update}) if update else options


def media_base(path: Path, options: ManifestOptions) -> str | Path:
    """What relative media paths of ``path`` are resolved against: ``media_root`` or the manifest's folder."""
    root = options.media_root
    if root is None:
        return path.resolve().parent
    if _is_url(root) and not root.startswith("file://"):
        return root
    return Path(root.removeprefix("file://")).expanduser().resolve()


def read_manifest(path: str | Path, default_domain: str | None = None, *, columns: Mapping[str, str] | None = None,
                  media_root: str | os.PathLike[str] | None = None,
                  options: ManifestOptions | None = None) -> Iterator[ManifestRow]:
    """Yield one :class:`ManifestRow` per data row of a manifest (or per picture/video of a folder), streaming.

    ``columns`` maps record fields to columns (``{"item_id": "sku"}``), ``media_root`` is what relative media paths
    are resolved against (default: the manifest's folder); ``options`` carries all three.

    >>> for row in read_manifest("catalog.csv", "product", columns={"item_id": "sku"}):  # doctest: +SKIP
    ...     print(row.where, row.record or row.error)
    """
    path = Path(path)
    opts = _options(options, default_domain, columns, media_root)
    if not path.exists():
        raise InputNotFoundError(f"manifest not found: {path}")
    if path.is_dir():
        manifests = _manifests_in(path)
        if not manifests:
            yield from _folder_rows(path, opts)
        for m in manifests:
            yield from read_manifest(m, options=opts)
        return
    reader = _Reader(str(path), opts, media_base(path, opts), path.suffix.lower() in (".csv", ".tsv"))
    yield from reader.rows(_raw_rows(path))


def expand_inputs(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The manifests (and media folders) that files, folders and globs stand for, in order, each once.

    A folder stands for the manifests at its top level, or for itself (a media catalog) when it holds none. A glob
    that matches nothing and a path that does not exist are an :class:`InputNotFoundError`.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: dict[Path, None] = {}

    def add(p: Path) -> None:
        if p.is_dir():
            for m in _manifests_in(p) or [p]:
                out.setdefault(m, None)
        else:
            out.setdefault(p, None)

    for item in inputs:
        text = os.fspath(item)
        p = Path(text).expanduser()
        if p.exists():
            add(p)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise InputNotFoundError(f"no file matches {text}")
            for m in matches:
                add(Path(m))
        else:
            raise InputNotFoundError(f"manifest not found: {text}")
    return list(out)


def count_rows(paths: Sequence[Path]) -> int | None:
    """Rows of the inputs, for a progress bar; None when counting would cost too much (folders, large files, JSON
    arrays)."""
    total = 0
    for p in paths:
        suffix = p.suffix.lower()
        if p.is_dir():
            return None
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(p).metadata.num_rows
        elif p.stat().st_size >= 512 << 20 or (suffix == ".json" and _first_char(p) == "["):
            return None
        else:
            with p.open("rb") as f:
                total += sum(1 for line in f if line.strip()) - (1 if suffix in (".csv", ".tsv") else 0)
    return total


def _sample(path: Path, n: int) -> list[dict[str, Any]]:
    out = []
    for _, raw in _raw_rows(path):
        if isinstance(raw, dict):
            out.append(raw)
        if len(out) >= n:
            break
    return out


def _media_values(row: Mapping[str, Any]) -> list[str]:
    values: list[str] = []
    for key in _PATH_FIELDS:
        if isinstance(row.get(key), str):
            values.append(row[key])
    images = row.get("images")
    if isinstance(images, str):
        try:
            images = split_list(images)
        except json.JSONDecodeError:
            images = []
    if isinstance(images, list):
        values += [x for x in images if isinstance(x, str)]
    for snap in row.get("snapshots") or []:
        if isinstance(snap, dict) and isinstance(snap.get("uri"), str):
            values.append(snap["uri"])
    return [v.strip() for v in values if v.strip()]


def _media_root_hint(path: Path, rel: str, base: Path) -> str | None:
    """When a relative media path is not under the manifest's folder but is under one above it (or the working
    folder), the ``--media-root`` that fixes it."""
    if (base / rel).exists():
        return None
    for candidate in [*list(base.parents)[:4], Path.cwd()]:
        if (candidate / rel).exists():
            return (f"{path}: media path {rel!r} is not under the manifest's folder {base} but is under {candidate}: "
                    f"pass --media-root {candidate}")
    return None


def check_inputs(paths: Sequence[str | os.PathLike[str]], options: ManifestOptions | None = None) -> None:
    """Refuse, before anything is loaded, inputs that no row of could make a record: one :class:`UsageError` that
    lists every such problem with the columns found and the ``--column``/``--domain``/``--media-root`` that fixes
    it. Looks at the header and the first rows of each input only. Remote media in them need ``cope[remote]``
    (:class:`~cope.errors.MissingExtraError` otherwise)."""
    options = options or ManifestOptions()
    problems: list[str] = []
    seen_columns: set[str] = set()
    remote: str | None = None
    for p in map(Path, paths):
        if p.is_dir():
            manifests = _manifests_in(p)
            if manifests:
                check_inputs(manifests, options)
            elif next(_walk_media(p), None) is None:
                problems.append(f"{p}: no manifest ({', '.join(MANIFEST_SUFFIXES)}) and no pictures or videos in it")
            continue
        if not p.exists():
            raise InputNotFoundError(f"manifest not found: {p}")
        header = _header(p)
        rows = _sample(p, _SAMPLE_ROWS)
        columns = list(dict.fromkeys(header if header is not None else (k for r in rows for k in r)))
        seen_columns.update(columns)
        if not rows:
            continue
        reader = _Reader(str(p), options, media_base(p, options), p.suffix.lower() in (".csv", ".tsv"))
        by_domain: dict[str, list[dict[str, Any]]] = {}
        no_domain = 0
        for raw in rows:
            domain = reader.domain_of(raw)
            if domain in FIELDS:
                by_domain.setdefault(domain, []).append(raw)
            elif domain is None:
                no_domain += 1
        if no_domain == len(rows):
            hint = ("--column domain=NAME" if options.columns.get("domain") is None else
                    f"the column {options.columns['domain']!r} of --column domain=... is empty")
            problems.append(f"no 'domain' column in {p} (columns: {', '.join(columns)}); pass --domain "
                            f"{'|'.join(DOMAINS)} or map one: {hint}")
            continue
        for domain, raws in by_domain.items():
            keys = columns if header is not None else list(dict.fromkeys(k for r in raws for k in r))
            plan = plan_columns(domain, keys, options.columns, str(p))
            for msg in plan.problems:
                if msg not in problems:
                    problems.append(msg)
            if plan.problems:
                continue
            try:
                first = reader.prepare(raws[0])
                given = _media_values({plan.rename.get(k, k): v for k, v in raws[0].items()})
            except json.JSONDecodeError:
                continue  # reported with its line when the rows are read
            if isinstance(first, str):
                continue
            remote = remote or next((m for m in _media_values(first) if is_remote(m)), None)
            local = [v for v in given if not _is_url(v.removeprefix("file://"))]
            if options.media_root is None and isinstance(reader.base, Path):
                for rel in local[:1]:
                    if not Path(rel).expanduser().is_absolute():
                        hint = _media_root_hint(p, rel, reader.base)
                        if hint and hint not in problems:
                            problems.append(hint)
    for target, column in options.columns.items():
        if target.rpartition(".")[2] != "domain" and seen_columns and _find_column(column, list(seen_columns)) is None:
            problems.append(f"--column {target}={column}: no column {column!r} in the inputs "
                            f"(columns: {', '.join(sorted(seen_columns))})")
    if problems:
        raise UsageError("; ".join(problems))
    if remote is not None:
        require(remote)

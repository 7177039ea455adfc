"""What a join did: rejected rows by reason (with lines), coverage per domain, link sources, users and the
cross-domain gain. Computed with DuckDB from the written Parquet files; nothing here loops over events.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from pydantic import BaseModel, Field

from cope.join.config import DOMAINS
from cope.join.sql import lit


class RejectExample(BaseModel):
    source: str
    line: int
    reason: str
    value: str | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}" + (f" ({self.value!r})" if self.value else "")


class SourceCounts(BaseModel):
    """One input file: its rows counted without the parser, and what became of them (``valid + rejected ==
    rows``, or the join stops)."""

    source: str
    format: str
    rows: int  # Parquet: rows in the footer; JSONL: non-blank lines; CSV: records (header excluded)
    valid: int = 0
    rejected: int = 0
    lines: int | None = None  # physical lines of a text file
    blank_lines: int | None = None


class EventCounts(BaseModel):
    rows_read: int = 0
    valid: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    reject_examples: list[RejectExample] = Field(default_factory=list)
    sources: list[SourceCounts] = Field(default_factory=list)  # per input file, in input order


class DomainCoverage(BaseModel):
    events: int = 0
    matched: int = 0  # events that point at a store item
    unmatched: int = 0
    matched_share: float = 0.0
    with_product_key: int = 0
    product_key_share: float = 0.0
    unmatched_ids: int = 0  # distinct ids not in the store
    top_unmatched: list[tuple[str, int]] = Field(default_factory=list)  # (id, events), most frequent first


class LinkCounts(BaseModel):
    link_table_rows: int = 0
    link_table_invalid: int = 0  # rows skipped (malformed, a field missing or of the wrong type...), by reason below
    link_table_invalid_by_reason: dict[str, int] = Field(default_factory=dict)
    link_table_ambiguous: int = 0  # ids linked to several products with no time range (smallest product id wins)
    threshold: float | None = None
    content_candidates: int = 0  # reached items without a link-table key, searched by content
    content_linked: int = 0
    content_below_threshold: int = 0
    events_by_link_source: dict[str, int] = Field(default_factory=dict)  # self / link / content / none


class UserStats(BaseModel):
    users: int = 0  # users with at least one valid event
    users_matched: int = 0  # ... with at least one event that points at a store item
    events_per_user_mean: float = 0.0
    events_per_user_p50: float = 0.0
    events_per_user_p90: float = 0.0
    events_per_user_max: int = 0
    multi_domain_users: int = 0
    multi_domain_share: float = 0.0  # of users_matched: sequences spanning more than one domain
    users_with_product_events: int = 0  # users with a product-domain event
    users_with_product_key: int = 0  # users with an event that carries a product key, from any domain


class JoinReport(BaseModel):
    """The report of one behaviour join (``report.json`` in the output folder)."""

    model_tag: str | None = None
    inputs: list[str] = Field(default_factory=list)
    outputs: dict[str, str] = Field(default_factory=dict)
    events: EventCounts = Field(default_factory=EventCounts)
    domains: dict[str, DomainCoverage] = Field(default_factory=dict)
    links: LinkCounts = Field(default_factory=LinkCounts)
    users: UserStats = Field(default_factory=UserStats)
    seconds: dict[str, float] = Field(default_factory=dict)  # wall time per phase
    cpu_seconds: dict[str, float] = Field(default_factory=dict)  # process CPU time per phase (all threads)

    def summary(self) -> str:
        """A few lines for a terminal."""
        e, u = self.events, self.users
        lines = [f"events: {e.rows_read} read, {e.valid} valid, {e.rejected} rejected"
                 + (" (" + ", ".join(f"{r}: {n}" for r, n in e.rejected_by_reason.items()) + ")" if e.rejected else "")]
        lines += [f"  {x}" for x in e.reject_examples[:5]]
        for d, c in self.domains.items():
            top = ", ".join(f"{i} ({n})" for i, n in c.top_unmatched[:3])
            lines.append(f"{d:>7}: {c.events} events, {c.matched_share:.1%} matched, "
                         f"{c.product_key_share:.1%} with product key"
                         + (f"; unmatched ids: {c.unmatched_ids}, top: {top}" if c.unmatched else ""))
        lines.append("links: " + (", ".join(f"{k} {v}" for k, v in self.links.events_by_link_source.items())
                                  or "no valid events")
                     + (f"; content links above {self.links.threshold}: {self.links.content_linked} of "
                        f"{self.links.content_candidates} items" if self.links.content_candidates else "")
                     + (f"; link tables: {self.links.link_table_invalid} of {self.links.link_table_rows} rows "
                        "skipped (" + ", ".join(f"{r}: {n}" for r, n in self.links.link_table_invalid_by_reason.items())
                        + ")" if self.links.link_table_invalid else ""))
        lines.append(f"users: {u.users} ({u.users_matched} matched), events/user mean {u.events_per_user_mean:.1f} "
                     f"p50 {u.events_per_user_p50:g} p90 {u.events_per_user_p90:g} max {u.events_per_user_max}; "
                     f"{u.multi_domain_share:.1%} span more than one domain; product key reach "
                     f"{u.users_with_product_events} -> {u.users_with_product_key} users")
        return "\n".join(lines)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")


def _share(a: int, b: int) -> float:
    return a / b if b else 0.0


def build_report(con: duckdb.DuckDBPyConnection, events_path: Path, rejects_path: Path, users: UserStats, *,
                 top_unmatched: int, reject_examples: int) -> JoinReport:
    """Counts over the written ``events.parquet`` and ``rejects.parquet`` (one row per event: ``part = 0``);
    ``users`` comes from the sequence pass, which saw every user's rows in order."""
    ev = f"read_parquet({lit(str(events_path))})"
    rj = f"read_parquet({lit(str(rejects_path))})"
    report = JoinReport()

    by_reason = con.execute(f"SELECT reason, count(*) FROM {rj} GROUP BY reason ORDER BY 2 DESC, 1").fetchall()
    examples = con.execute(f"SELECT source, line, reason, value FROM {rj} ORDER BY source, line LIMIT ?",
                           [reject_examples]).fetchall()
    groups = con.execute(f"""
        SELECT domain, link_source, count(*), count(item_id), count(product_key)
        FROM {ev} WHERE part = 0 GROUP BY domain, link_source""").fetchall()
    valid = sum(g[2] for g in groups)
    rejected = sum(n for _, n in by_reason)
    report.events = EventCounts(rows_read=valid + rejected, valid=valid, rejected=rejected,
                                rejected_by_reason={r: n for r, n in by_reason},
                                reject_examples=[RejectExample(source=s, line=ln, reason=r, value=v)
                                                 for s, ln, r, v in examples])
    unmatched = con.execute(f"""
        WITH u AS (SELECT domain, id, count(*) AS n FROM {ev} WHERE part = 0 AND item_id IS NULL GROUP BY domain, id)
        SELECT domain, id, n, count(*) OVER (PARTITION BY domain) AS ids FROM u
        QUALIFY row_number() OVER (PARTITION BY domain ORDER BY n DESC, id) <= greatest(?, 1)
        ORDER BY domain, n DESC, id""", [top_unmatched]).fetchall()
    by_source: dict[str, int] = {}
    for d in sorted({g[0] for g in groups}, key=DOMAINS.index):
        n, matched, keyed = (sum(g[i] for g in groups if g[0] == d) for i in (2, 3, 4))
        top = [(i, c) for dd, i, c, _ in unmatched if dd == d]
        report.domains[d] = DomainCoverage(
            events=n, matched=matched, unmatched=n - matched, matched_share=_share(matched, n),
            with_product_key=keyed, product_key_share=_share(keyed, n),
            unmatched_ids=next((ids for dd, _, _, ids in unmatched if dd == d), 0), top_unmatched=top[:top_unmatched])
    for _, source, n, _, _ in groups:
        by_source[source or "none"] = by_source.get(source or "none", 0) + n
    report.links.events_by_link_source = dict(sorted(by_source.items(), key=lambda kv: -kv[1]))
    report.users = users
    return report

"""``cope join EVENTS... --db DIR --out OUT``: behaviour logs onto store items, product keys and user sequences."""

from __future__ import annotations

import argparse
import sys

from cope.errors import UsageError

EXIT_REJECTS = 3


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise UsageError(f"{flag} takes KEY=VALUE, got {v!r}")
        out[key.strip()] = val.strip()
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "join", help="join behaviour logs onto the item store (events, product keys, per-user sequences)",
        description="Map each event of the logs (user, time, domain, id; live: offset or start/end seconds) onto "
        "the store item it points at, give it a product key (link table, else nearest product vector above "
        "--threshold), and write events.parquet, sequences.parquet, rejects.parquet, product_links.parquet and "
        "report.json to OUT. Bad rows are reported with file and line, never dropped silently; a log that cannot be "
        "read to its end (an unterminated quote, say) stops the run with exit code 2.")
    p.add_argument("events", nargs="+", help="behaviour logs: Parquet, CSV/TSV or JSONL files, folders or globs")
    p.add_argument("--db", required=True, help="LanceDB directory or URI with the item table")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--table", default="items")
    p.add_argument("--links", action="append", default=[], metavar="FILE",
                   help="link table (domain, id, product_id[, start, end]); repeatable")
    p.add_argument("--no-content-links", action="store_true",
                   help="do not link unlinked videos/images/slices to their nearest product vector")
    p.add_argument("--threshold", type=float, default=0.5, help="least cosine of a content link (default 0.5)")
    p.add_argument("--vector-column", default="vector", choices=["vector", "image_vector", "text_vector"])
    p.add_argument("--last-n", type=int, default=50, help="events per user in sequences.parquet (default 50)")
    p.add_argument("--profiles", action="store_true", help="also write profiles.parquet (user vectors)")
    p.add_argument("--half-life-hours", type=float, default=72.0, help="recency half-life of profile weights")
    p.add_argument("--column", action="append", metavar="FIELD=NAME",
                   help="log column of a field (user_id, ts, domain, id, offset, start, end, action, weight)")
    p.add_argument("--domain-alias", action="append", metavar="NAME=DOMAIN",
                   help="extra domain spelling, e.g. item=product (repeatable)")
    p.add_argument("--ts-unit", default="auto", choices=["auto", "s", "ms", "us", "ns"],
                   help="unit of numeric timestamps (default: guessed from the magnitude)")
    p.add_argument("--delimiter", default=",", help="CSV delimiter (.tsv files use a tab)")
    p.add_argument("--memory-limit", default=None,
                   help="peak memory of the join process, e.g. 1.5GiB (the default) or 4GB; DuckDB spills to disk "
                        "beyond its share")
    p.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    p.add_argument("--temp-dir", default=None, help="spill/staging folder (default OUT/.tmp)")
    p.add_argument("--top-unmatched", type=int, default=10, help="unmatched ids listed per domain")
    p.add_argument("--hit-rate", type=int, default=None, metavar="K",
                   help="afterwards, print next-product hit-rate@K, cross-domain vs product-only history")
    p.add_argument("--strict", action="store_true", help=f"exit {EXIT_REJECTS} when any row was rejected")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cope.join import JoinConfig, join_behaviour

    aliases = {**JoinConfig().domain_aliases, **_pairs(args.domain_alias, "--domain-alias")}
    config = JoinConfig(
        table=args.table, links=args.links, content_links=not args.no_content_links, threshold=args.threshold,
        vector_column=args.vector_column, last_n=args.last_n, profiles=args.profiles,
        half_life_hours=args.half_life_hours, columns=_pairs(args.column, "--column"), domain_aliases=aliases,
        ts_unit=args.ts_unit, csv_delimiter=args.delimiter, threads=args.threads, temp_dir=args.temp_dir,
        top_unmatched=args.top_unmatched, **({"memory_limit": args.memory_limit} if args.memory_limit else {}))
    result = join_behaviour(args.events, args.db, args.out, config=config)
    print(result.report.summary())
    print(f"wrote {', '.join(sorted(p.name for p in result.paths.values()))} to {args.out}")
    if args.hit_rate:
        from cope.join import next_product_hit_rate

        print(next_product_hit_rate(result.paths["events"], args.db, k=args.hit_rate, table=args.table,
                                    half_life_hours=args.half_life_hours, vector_column=args.vector_column,
                                    memory_limit=config.memory_limit, threads=args.threads))
    rejected = result.report.events.rejected
    if rejected:
        print(f"{rejected} rows rejected; all of them with file and line: {result.paths['rejects']}", file=sys.stderr)
        if args.strict:
            return EXIT_REJECTS
    return 0

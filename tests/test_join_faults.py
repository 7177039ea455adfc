"""Faulty event logs: no row is dropped silently. Every row of a file is an event or a reject with its line, or the
run stops (EventLogError; `cope join` exit 2, one line, no traceback) before writing anything."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cope.join import join_behaviour
from cope.join.events import TS_MAX, TS_MIN
from cope.join.logfiles import EventLogError, scan_text
from cope.join.synth import write_items

HEADER = b"user_id,ts,domain,id\n"


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "db"
    write_items(path, [{"domain": "product", "source_id": "p1", "vector": [1.0, 0.0, 0.0, 0.0]}], dim=4)
    return path


def _row(k: int) -> bytes:
    return f"u{k},2026-01-01 10:{k // 60 % 60:02d}:{k % 60:02d},product,p1\n".encode()


def _csv(path: Path, n: int, replace: dict[int, bytes] | None = None) -> Path:
    """A CSV of ``n`` good records on lines 2..n+1; ``replace`` swaps the line with that number."""
    lines = [HEADER] + [_row(k) for k in range(n)]
    for ln, data in (replace or {}).items():
        lines[ln - 1] = data
    path.write_bytes(b"".join(lines))
    return path


def _rejects(out: Path) -> list[tuple[int, str]]:
    t = pq.read_table(out / "rejects.parquet")
    return list(zip(t.column("line").to_pylist(), t.column("reason").to_pylist()))


def _accounted(report, rows_in_file: int) -> None:
    """Rows read (valid) + rejects == the rows the file holds, per file and in total."""
    (src,) = report.events.sources
    assert src.rows == rows_in_file
    assert src.valid + src.rejected == rows_in_file
    assert report.events.valid + report.events.rejected == rows_in_file


def _cli(capsys, path: Path, db: Path, out: Path) -> tuple[int, str]:
    from cope.cli import main

    code = main(["-q", "join", str(path), "--db", str(db), "--out", str(out), "--no-content-links"])
    return code, capsys.readouterr().err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("cope join: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- CSV quoting ------------------------------------------------------------------------------------------------------

def test_unterminated_quote_in_the_middle_of_a_csv_fails_loudly(db, tmp_path, capsys):
    """Before: the parser gave up at the quote, the rest of the file vanished, exit 0, '1 rejected'."""
    log = _csv(tmp_path / "ev.csv", 2000, {1002: b'u1000,2026-01-01 10:00:00,product,"p1\n'})
    with pytest.raises(EventLogError, match=r"ev\.csv:1002: a quoted field opened on this line is never closed.* "
                                            r"the 999 lines after it would be lost"):
        join_behaviour(log, db, tmp_path / "out")
    assert not (tmp_path / "out" / "events.parquet").exists()

    code, err = _cli(capsys, log, db, tmp_path / "cli")
    assert code == 2
    assert "ev.csv:1002:" in _one_line_error(err)
    assert not (tmp_path / "cli" / "events.parquet").exists()


def test_a_quote_closed_only_lines_later_fails_loudly(db, tmp_path, capsys):
    """A stray quote that another one closes 300 lines later makes one malformed 'row' of 301 lines."""
    log = _csv(tmp_path / "ev.csv", 1000, {101: b'u99,2026-01-01 10:00:00,product,"p1\n',
                                           401: b'u399,2026-01-01 10:00:00,product,p1",x\n'})
    with pytest.raises(EventLogError, match=r"ev\.csv:101: a malformed CSV row runs over 301 lines \(101-401\)"):
        join_behaviour(log, db, tmp_path / "out")
    assert not (tmp_path / "out" / "events.parquet").exists()
    code, err = _cli(capsys, log, db, tmp_path / "cli")
    assert code == 2 and "ev.csv:101:" in _one_line_error(err)


def test_an_unterminated_quote_on_the_last_line_is_one_reject(db, tmp_path):
    log = _csv(tmp_path / "ev.csv", 50, {51: b'u49,2026-01-01 10:00:00,product,"p1\n'})
    report = join_behaviour(log, db, tmp_path / "out").report
    assert _rejects(tmp_path / "out") == [(51, "malformed CSV row")]
    _accounted(report, 50)


def test_a_quote_inside_an_unquoted_value(db, tmp_path, capsys):
    """5"x is read as a value; its line numbers are right while every line is a record (no blank line, no
    malformed row). With a blank line the quotes no longer tell where records start: the run stops."""
    log = _csv(tmp_path / "ev.csv", 20, {5: b'u3,2026-01-01 10:00:00,product,5"x\n'})
    report = join_behaviour(log, db, tmp_path / "out").report
    _accounted(report, 20)
    lines = pq.read_table(tmp_path / "out" / "events.parquet").column("line").to_pylist()
    assert sorted(lines) == list(range(2, 22))

    log.write_bytes(log.read_bytes() + b"\n" + _row(20))
    with pytest.raises(EventLogError, match=r"ev\.csv:5: a quote on this line is never closed"):
        join_behaviour(log, db, tmp_path / "out2")
    assert not (tmp_path / "out2" / "events.parquet").exists()
    code, err = _cli(capsys, log, db, tmp_path / "cli")
    assert code == 2 and "ev.csv:5:" in _one_line_error(err)

    # two such quotes pair up across the lines between them: 3 records by the quotes, 6 by the parser
    log = _csv(tmp_path / "ev2.csv", 20, {5: b'u3,2026-01-01 10:00:00,product,5"x\n',
                                          9: b'u7,2026-01-01 10:00:00,product,7"y\n', 15: b"\n"})
    with pytest.raises(EventLogError, match=r"ev2\.csv: the CSV parser read 19 records and 0 malformed rows, but "
                                            r"the line breaks outside quotes delimit 15 records"):
        join_behaviour(log, db, tmp_path / "out3")
    assert not (tmp_path / "out3" / "events.parquet").exists()


def test_quoted_line_breaks_blank_lines_and_malformed_rows_are_all_accounted_for(db, tmp_path):
    log = tmp_path / "ev.csv"
    log.write_bytes(HEADER + _row(0) + b'u1,2026-01-01 10:00:01,product,"p\n1"\n' + b"\n"
                    + b"u2,2026-01-01 10:00:02,product,p1,extra\n" + b"   \n" + _row(3))
    report = join_behaviour(log, db, tmp_path / "out").report
    # 1 header, 2 good, 3-4 one record with a quoted line break, 5 blank, 6 a column too many, 7 blanks only, 8 good
    assert _rejects(tmp_path / "out") == [(6, "malformed CSV row"), (7, "malformed CSV row")]
    (src,) = report.events.sources
    assert (src.lines, src.blank_lines, src.rows, src.valid, src.rejected) == (8, 1, 5, 3, 2)
    ev = pq.read_table(tmp_path / "out" / "events.parquet")
    assert sorted(ev.column("line").to_pylist()) == [2, 3, 8]


# -- bytes that are not text ------------------------------------------------------------------------------------------

def test_nul_and_0xff_bytes_reject_their_line_and_keep_the_rest_csv(db, tmp_path, capsys):
    """Before: one 0xff byte failed the whole file with no line number (NUL went through as a value)."""
    log = _csv(tmp_path / "ev.csv", 3000, {
        11: b"u9,2026-01-01 10:00:00,pro\x00duct,p1\n",
        1501: b"u1499,2026-01-01 10:00:00,product,p\xff1\n",
        2500: b"u2498,2026-01-01 \xff\x00,product,p1\n",
        3001: b"u2999,2026-01-01 10:00:00,caf\xe9,p1\n",  # latin-1, not UTF-8
    })
    report = join_behaviour(log, db, tmp_path / "out").report
    assert _rejects(tmp_path / "out") == [(11, "NUL byte"), (1501, "invalid UTF-8"), (2500, "NUL byte"),
                                          (3001, "invalid UTF-8")]
    _accounted(report, 3000)
    assert report.events.valid == 2996
    values = pq.read_table(tmp_path / "out" / "rejects.parquet").column("value").to_pylist()
    assert values[1] == "u1499,2026-01-01 10:00:00,product,p\ufffd1"  # the line, bad bytes shown as U+FFFD

    code, err = _cli(capsys, log, db, tmp_path / "cli")
    assert code == 0 and "4 rows rejected" in err


def test_a_bad_byte_inside_a_quoted_multi_line_record_rejects_that_record(db, tmp_path):
    log = tmp_path / "ev.csv"
    log.write_bytes(HEADER + _row(0) + b'u1,2026-01-01 10:00:01,product,"a\nb\xffc"\n' + _row(2)
                    + b'u3,2026-01-01 10:00:03,product,"x\ny"\n' + b"u4,2026-01-01 10:00:04,product,\xfe\n")
    report = join_behaviour(log, db, tmp_path / "out").report
    assert _rejects(tmp_path / "out") == [(3, "invalid UTF-8"), (8, "invalid UTF-8")]  # 3: the record's line
    _accounted(report, 5)
    assert sorted(pq.read_table(tmp_path / "out" / "events.parquet").column("line").to_pylist()) == [2, 5, 6]


def test_a_carriage_return_inside_a_line_is_a_reject_not_a_failure(db, tmp_path):
    """Before: DuckDB's CSV parser failed the whole file ('reached an invalid state'), no line number."""
    log = _csv(tmp_path / "ev.csv", 10, {4: b"u2,2026-01-01 10:00:02,product,p\r1\n",
                                         7: b"u5,2026-01-01 10:00:05,product,p1\ru5b,2026-01-01,product,p1\n"})
    report = join_behaviour(log, db, tmp_path / "out").report
    assert _rejects(tmp_path / "out") == [(4, "carriage return inside a line"), (7, "carriage return inside a line")]
    _accounted(report, 10)


def test_mixed_line_ends_are_read_with_the_right_line_numbers(db, tmp_path):
    """Logs concatenated from several machines: some lines end in \\r\\n. Before: DuckDB's CSV parser failed the
    whole file ('reached an invalid state'); its line reader saw an extra blank line after each such line."""
    lines = [HEADER] + [_row(k) for k in range(400)]
    for k in (10, 11, 200, 399):
        lines[k] = lines[k].replace(b"\n", b"\r\n")
    lines[300] = b"u299,2026-01-01 10:00:00,product,p1,extra\r\n"  # a malformed row: line numbers from the map
    log = tmp_path / "ev.csv"
    log.write_bytes(b"".join(lines))
    report = join_behaviour(log, db, tmp_path / "out").report
    assert _rejects(tmp_path / "out") == [(301, "malformed CSV row")]
    _accounted(report, 400)
    got = sorted(pq.read_table(tmp_path / "out" / "events.parquet").column("line").to_pylist())
    assert got == [ln for ln in range(2, 402) if ln != 301]

    rows = [(json.dumps({"user_id": "u", "ts": 1767261600 + k, "domain": "product", "id": "p1"})
             + ("\r\n" if k % 7 == 0 else "\n")).encode() for k in range(100)]
    rows[50] = b"{oops\n"
    (tmp_path / "ev.jsonl").write_bytes(b"".join(rows))
    report = join_behaviour(tmp_path / "ev.jsonl", db, tmp_path / "out2").report
    assert _rejects(tmp_path / "out2") == [(51, "invalid JSON")]
    _accounted(report, 100)


def test_bad_bytes_in_the_header_fail_with_line_1(db, tmp_path, capsys):
    log = tmp_path / "ev.csv"
    log.write_bytes(b"user_id,ts,dom\xffain,id\n" + _row(0))
    with pytest.raises(EventLogError, match=r"ev\.csv:1: cannot read the header line \(invalid UTF-8\)"):
        join_behaviour(log, db, tmp_path / "out")
    code, err = _cli(capsys, log, db, tmp_path / "cli")
    assert code == 2 and "ev.csv:1:" in _one_line_error(err)


def test_a_file_in_another_encoding_fails_with_its_first_bad_line(db, tmp_path, monkeypatch, capsys):
    import cope.join.logfiles

    monkeypatch.setattr(cope.join.logfiles, "MAX_BAD_LINES", 5)
    log = tmp_path / "ev.jsonl"
    log.write_bytes("".join(json.dumps({"user_id": f"u{k}", "ts": "2026-01-01", "domain": "product", "id": "p1"})
                            + "\n" for k in range(20)).encode("utf-16-le"))
    with pytest.raises(EventLogError, match=r"ev\.jsonl: more than 5 lines cannot be read .*line 1: NUL byte"):
        join_behaviour(log, db, tmp_path / "out")
    code, err = _cli(capsys, log, db, tmp_path / "cli")
    assert code == 2 and "line 1: NUL byte" in _one_line_error(err)


def test_jsonl_bad_bytes_and_line_numbers(db, tmp_path):
    good = [(json.dumps({"user_id": f"u{k}", "ts": 1767261600 + k, "domain": "product", "id": "p1"}) + "\n").encode()
            for k in range(1500)]
    good[99] = b'{"user_id": "u99", "ts": 1767261699, "domain": "product", "id": "p\xff1"}\n'
    good[699] = b'{"user_id": "u699", "ts": 1767262299, "domain": "pro\x00duct", "id": "p1"}\n'
    good[999] = b"\n"  # blank: skipped, not a row
    good[1199] = b"{not json\n"
    good[1299] = b'{"user_id": "u1299", "ts": 1767262899,\r"domain": "product", "id": "p1"}\r\n'
    log = tmp_path / "ev.jsonl"
    log.write_bytes(b"".join(good))
    report = join_behaviour(log, db, tmp_path / "out").report
    assert _rejects(tmp_path / "out") == [(100, "invalid UTF-8"), (700, "NUL byte"), (1200, "invalid JSON"),
                                          (1300, "carriage return inside a line")]
    (src,) = report.events.sources
    assert (src.lines, src.blank_lines) == (1500, 1)
    _accounted(report, 1499)
    lines = set(pq.read_table(tmp_path / "out" / "events.parquet").column("line").to_pylist())
    assert lines == set(range(1, 1501)) - {100, 700, 1000, 1200, 1300}


def test_parquet_text_that_is_not_utf8_fails_with_row_and_column(db, tmp_path, capsys):
    ids = pa.array([b"p1"] * 500 + [b"p\xff1"] + [b"p1"] * 99, pa.binary())
    ids = pa.Array.from_buffers(pa.string(), len(ids), ids.buffers())  # Arrow does not check; DuckDB does
    log = tmp_path / "ev.parquet"
    pq.write_table(pa.table({"user_id": [f"u{k}" for k in range(600)], "ts": [1767261600.0] * 600,
                             "domain": ["product"] * 600, "id": ids}), log)
    with pytest.raises(EventLogError, match=r"ev\.parquet: row 501, column 'id': text that is not valid UTF-8"):
        join_behaviour(log, db, tmp_path / "out")
    code, err = _cli(capsys, log, db, tmp_path / "cli")
    assert code == 2 and "row 501" in _one_line_error(err)


# -- timestamps -------------------------------------------------------------------------------------------------------

BAD_TIMES = ["inf", "-inf", "nan", "infinity", "1e30", "-1", "99999-01-01", "3000-01-01T00:00:00Z",
             "1969-12-31T23:59:59Z", "1e400"]


def _ts_in_range(out: Path) -> None:
    ts = pq.read_table(out / "events.parquet").column("ts").to_pylist()  # to Python datetimes: no overflow
    lo, hi = (pa.scalar(x).cast(pa.timestamp("us", tz="UTC")).as_py() for x in (TS_MIN, TS_MAX))
    assert ts and all(lo <= t < hi for t in ts)


def test_out_of_range_timestamps_are_rejected_csv(db, tmp_path):
    """Before: 'inf' was stored as an infinite timestamp that readers cannot convert."""
    replace = {10 + 7 * k: f"u{k},{v},product,p1\n".encode() for k, v in enumerate(BAD_TIMES)}
    log = _csv(tmp_path / "ev.csv", 200, replace)
    report = join_behaviour(log, db, tmp_path / "out").report
    assert _rejects(tmp_path / "out") == [(ln, "timestamp out of range") for ln in sorted(replace)]
    values = pq.read_table(tmp_path / "out" / "rejects.parquet").column("value").to_pylist()
    assert values == BAD_TIMES
    _accounted(report, 200)
    _ts_in_range(tmp_path / "out")


def test_out_of_range_timestamps_are_rejected_jsonl(db, tmp_path):
    rows = [json.dumps({"user_id": "u", "ts": 1767261600 + k, "domain": "product", "id": "p1"}) for k in range(30)]
    rows[3] = '{"user_id": "u", "ts": 1e400, "domain": "product", "id": "p1"}'  # a JSON number beyond a double
    rows[5] = '{"user_id": "u", "ts": NaN, "domain": "product", "id": "p1"}'
    rows[7] = '{"user_id": "u", "ts": Infinity, "domain": "product", "id": "p1"}'
    rows[9] = json.dumps({"user_id": "u", "ts": "inf", "domain": "product", "id": "p1"})
    rows[11] = json.dumps({"user_id": "u", "ts": -86400, "domain": "product", "id": "p1"})
    rows[13] = json.dumps({"user_id": "u", "ts": 4e18, "domain": "product", "id": "p1"})  # ns: year 2096, fine
    log = tmp_path / "ev.jsonl"
    log.write_text("\n".join(rows) + "\n")
    report = join_behaviour(log, db, tmp_path / "out").report
    assert _rejects(tmp_path / "out") == [(k, "timestamp out of range") for k in (4, 6, 8, 10, 12)]
    _accounted(report, 30)
    _ts_in_range(tmp_path / "out")


def test_out_of_range_timestamps_are_rejected_parquet(db, tmp_path):
    epochs = [1767261600.0, float("inf"), float("nan"), -1.0, 1e20, 1767261601.0, float("-inf")]
    log = tmp_path / "epoch.parquet"
    n = len(epochs)
    pq.write_table(pa.table({"user_id": ["u"] * n, "ts": pa.array(epochs), "domain": ["product"] * n,
                             "id": ["p1"] * n}), log)
    report = join_behaviour(log, db, tmp_path / "out").report
    assert _rejects(tmp_path / "out") == [(k, "timestamp out of range") for k in (2, 3, 4, 5, 7)]
    _accounted(report, n)
    _ts_in_range(tmp_path / "out")

    log = tmp_path / "typed.parquet"  # a timestamp column far in the future
    pq.write_table(pa.table({"user_id": ["u", "u"], "ts": pa.array([1_767_261_600_000_000, 2**62],
                                                                   pa.timestamp("us", tz="UTC")),
                             "domain": ["product"] * 2, "id": ["p1"] * 2}), log)
    report = join_behaviour(log, db, tmp_path / "out2").report
    assert _rejects(tmp_path / "out2") == [(2, "timestamp out of range")]
    _accounted(report, 2)


# -- the counts themselves --------------------------------------------------------------------------------------------

def test_rows_that_go_missing_stop_the_run_before_anything_is_written(db, tmp_path, monkeypatch, capsys):
    """The last line of defence: valid + rejected is checked per file against the file's own count."""
    from cope.join.events import EventLogs

    prepare = EventLogs.prepare

    def losing(self):  # as if the parser had silently read one row fewer than the file holds
        prepare(self)
        self.counts[0].rows += 1
        return self

    monkeypatch.setattr(EventLogs, "prepare", losing)
    log = _csv(tmp_path / "ev.csv", 100)
    with pytest.raises(EventLogError, match=r"ev\.csv: 101 rows in the file, but 100 were joined and 0 rejected"):
        join_behaviour(log, db, tmp_path / "out")
    assert not (tmp_path / "out" / "events.parquet").exists()
    assert not (tmp_path / "out" / "sequences.parquet").exists()
    code, err = _cli(capsys, log, db, tmp_path / "cli")
    assert code == 2 and "unaccounted for" in _one_line_error(err)


@pytest.mark.parametrize("block", [1, 3, 8, 64, 1 << 20])
def test_scan_text_counts_lines_and_finds_bad_ones_across_blocks(tmp_path, block):
    rnd = random.Random(block)
    lines = []
    for k in range(300):
        kind = rnd.random()
        lines.append(b"" if kind < 0.05 else b"caf\xe9" if kind < 0.08 else b"a\x00b" if kind < 0.1
                     else "été".encode() if kind < 0.15 else b"x\ry" if kind < 0.17 else b"row %d\r" % k)
    data = b"\n".join(lines)  # no newline after the last line: it still counts
    (tmp_path / "f.txt").write_bytes(data)
    scan = scan_text(str(tmp_path / "f.txt"), tmp_path / "clean.txt", block_bytes=block)
    assert scan.lines == 300
    expected = [k + 1 for k, ln in enumerate(lines) if ln in (b"caf\xe9", b"a\x00b", b"x\ry")]
    assert [b[0] for b in scan.bad] == expected
    clean = Path(scan.path).read_bytes()
    assert clean.count(b"\n") == data.count(b"\n") and clean.decode("utf-8").count("\ufffd") == len(expected)

    (tmp_path / "ok.txt").write_bytes(b"a\r\nb\r\n\r\n")
    ok = scan_text(str(tmp_path / "ok.txt"), tmp_path / "unused.txt", block_bytes=block)
    assert (ok.path, ok.lines, ok.bad) == (str(tmp_path / "ok.txt"), 3, [])
    assert not (tmp_path / "unused.txt").exists()  # a clean file is read in place, never copied

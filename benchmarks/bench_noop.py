"""Wall time of runs that have nothing to do: a no-op re-run of the demo catalog, a missing manifest, and the bare
interpreter + ``import cope.cli`` start-up as the same-run baseline (the floor any CLI call pays).

    .venv/bin/python benchmarks/bench_noop.py [--repeats 5]

The demo is built once (with cope-default, the real default model); each contender then runs alternately
(A B C A B C ...), in fresh processes, and min and median wall times are printed with their ratio to the baseline.
Goal (issue 13): the no-op re-run and the missing manifest both under 3 s on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPE = [sys.executable, "-m", "cope.cli"]


def timed(cmd: list[str], expect: int) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != expect:
        raise SystemExit(f"{cmd} exited {done.returncode}, expected {expect}: {done.stderr[-500:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="cope-default")
    args = ap.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="bench-noop-")) / "cope-demo"
    timed([*COPE, "-q", "demo", "--out", str(out), "--model", args.model], 0)  # build once (loads the model)
    manifest = out / "catalog" / "catalog.jsonl"
    contenders = {
        "baseline: python -c 'import cope.cli'": ([sys.executable, "-c", "import cope.cli"], 0),
        "no-op re-run of the demo (cope embed)": ([*COPE, "-q", "embed", str(manifest), "--db",
                                                   str(out / "cope.lancedb"), "--model", args.model], 0),
        "missing manifest (cope embed)": ([*COPE, "-q", "embed", str(out / "nothere.jsonl"), "--db",
                                           str(out / "cope.lancedb")], 2),
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for name, (cmd, expect) in contenders.items():
            times[name].append(timed(cmd, expect))
    base = statistics.median(next(iter(times.values())))
    for name, t in times.items():
        print(f"{name:42s} min {min(t):5.2f} s  median {statistics.median(t):5.2f} s  "
              f"({statistics.median(t) / base:.1f}x baseline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert-stage benchmark: throughput (lines/s) and peak RSS on generated review files.

Shows that memory stays flat as the input grows (convert streams lines and writes parquet in
row chunks). Each size runs in its own subprocess so ``ru_maxrss`` is that run's peak alone.

    .venv/bin/python bench/bench_convert.py --sizes 100000 1000000

Generated lines imitate the 2018 re-export: every field a string (``"overall": "4.0"``,
``"unixReviewTime": "1393372800"``), 300-600 bytes each.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ["".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=3 + i % 8)) for i in range(3000)]


def generate(path: Path, n_lines: int, seed: int = 0) -> int:
    """Write ``n_lines`` 2018-style review lines (gzip); return the uncompressed byte count."""
    rng = random.Random(seed)
    n_users, n_items = max(1, n_lines // 10), max(1, n_lines // 50)
    total = 0
    with gzip.open(path, "wb", compresslevel=1) as fh:
        for i in range(n_lines):
            day = rng.randrange(10_000, 18_000)
            record = {
                "overall": f"{rng.randint(1, 5)}.0",
                "verified": rng.choice(["True", "False"]),
                "reviewTime": time.strftime("%m %d, %Y", time.gmtime(day * 86400)),
                "reviewerID": f"A{rng.randrange(n_users):013d}",
                "asin": f"B{rng.randrange(n_items):09d}",
                "reviewerName": " ".join(rng.choices(WORDS, k=2)),
                "reviewText": " ".join(rng.choices(WORDS, k=rng.randint(10, 50))),
                "summary": " ".join(rng.choices(WORDS, k=rng.randint(2, 6))),
                "unixReviewTime": str(day * 86400),
            }
            if i % 4 == 0:
                record["vote"] = str(rng.randint(2, 40))
            line = (json.dumps(record) + "\n").encode()
            total += len(line)
            fh.write(line)
    return total


def worker(reviews: Path, out_dir: Path, chunk_rows: int) -> dict:
    """Convert one file in this process and report time and peak RSS."""
    from llm4rec.data.convert import convert_dataset

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    summary = convert_dataset(reviews, None, out_dir, progress=False, chunk_rows=chunk_rows)
    seconds = time.perf_counter() - started
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lines = summary["reviews"]["lines"]
    return {
        "lines": lines,
        "rows": summary["reviews"]["rows"],
        "rejected": summary["reviews"]["rejected"],
        "seconds": round(seconds, 2),
        "lines_per_s": round(lines / seconds),
        "rss_after_import_mib": round(rss_before / 1024, 1),
        "peak_rss_mib": round(rss_peak / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--chunk-rows", type=int, default=50_000, help="parquet row-group size")
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("REVIEWS", "OUT_DIR"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.chunk_rows)))
        return
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in args.sizes:
            raw = Path(tmp) / f"reviews_{n}.json.gz"
            t0 = time.perf_counter()
            raw_bytes = generate(raw, n)
            gen_s = time.perf_counter() - t0
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    str(raw),
                    str(Path(tmp) / f"out_{n}"),
                    "--chunk-rows",
                    str(args.chunk_rows),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result.update(
                avg_line_bytes=round(raw_bytes / n),
                gz_mib=round(raw.stat().st_size / 2**20, 1),
                generate_s=round(gen_s, 1),
            )
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
            raw.unlink()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, chunk_rows {args.chunk_rows}"
    )
    print("| lines | avg bytes/line | gzip MiB | seconds | lines/s | RSS after import MiB | peak RSS MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['lines']:,} | {r['avg_line_bytes']} | {r['gz_mib']} | {r['seconds']} | "
            f"{r['lines_per_s']:,} | {r['rss_after_import_mib']} | {r['peak_rss_mib']} |"
        )


if __name__ == "__main__":
    main()

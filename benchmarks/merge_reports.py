"""Merge several ``trueconv bench`` reports into one Markdown table of ratios per row.

Usage::

    python benchmarks/merge_reports.py "2 threads=results/bench-2threads.md" \
        "2 threads, autotuned=results/bench-2threads-autotune.md" "1 thread=results/bench-1thread.md"

The first report gives the time, algorithm, GFLOP/s, fastest peer and error
columns; every report adds its ratio (fastest peer time / trueconv time) and
the algorithm ``auto`` ran there.
"""

from __future__ import annotations

import sys


def rows(path: str) -> dict[tuple[str, str], list[str]]:
    """``(case, dtype) -> cells`` of every data row of a report."""
    out = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("| ") or line.startswith("| case") or "---" in line:
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out[(cells[0], cells[1])] = cells
    return out


def main(argv: list[str]) -> int:
    reports = [arg.split("=", 1) for arg in argv]
    tables = [(label, rows(path)) for label, path in reports]
    first_label, first = tables[0]
    head = ["case", "dtype", f"trueconv ({first_label})", "GFLOP/s", "fastest peer", "peer time",
            "max rel. error"]
    for label, _ in tables:
        head.append(f"ratio, algorithm ({label})")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" if i in (2, 3, 5, 6) else "---" for i in range(len(head))) + "|")
    for key, cells in first.items():
        # cells: case, dtype, time, algorithm, GFLOP/s, peer, peer time, ratio, error, all peers
        line = [cells[0], cells[1], cells[2], cells[4], cells[5], cells[6], cells[8]]
        for _, table in tables:
            other = table.get(key)
            line.append(f"{other[7]} ({other[3]})" if other and other[7] != "-" else "-")
        print("| " + " | ".join(line) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

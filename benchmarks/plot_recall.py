"""Plot a recorded recall table (`benchmarks/results/recall_table.md`): accuracy against length,
one line per model, each seed as a faint dot.

The table is the record when its cells were put together from single runs (README says which);
this draws exactly what it states, so the plots cannot drift from it. A cell is a seed's value
("96.0%"), a mean with each seed in brackets ("96.9% (97.1%, 96.7%)"), "diverged at step N" (not
drawn) or "not run".

    python benchmarks/plot_recall.py [benchmarks/results/recall_table.md] [-o benchmarks/results]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recall_table import plot

PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")
LENGTH = re.compile(r"L = (\d+)")


def seeds_of(cell: str) -> list[dict]:
    """The finished runs a cell states: each seed's accuracy (the bracketed values when there
    are brackets, else the cell's one value); diverged or missing runs are left out."""
    inner = re.search(r"\((.*)\)", cell)
    values = PERCENT.findall(inner.group(1) if inner else cell)
    return [{"accuracy": float(v) / 100} for v in values]


def tables_of(text: str) -> list[tuple[str, list[int], dict]]:
    """Every markdown table in `text` whose header names lengths: (the paragraph before it,
    the lengths, {model: {L: [runs]}})."""
    found, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        lengths = [int(L) for L in LENGTH.findall(line)]
        if not (line.startswith("| model |") and lengths):
            continue
        title = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        rows = {}
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip("|").split("|")]
            rows[cells[0]] = {L: seeds_of(c) for L, c in zip(lengths, cells[1:], strict=False)}
        found.append((title, lengths, rows))
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", nargs="?", default="benchmarks/results/recall_table.md")
    p.add_argument("-o", "--out", default="benchmarks/results", help="folder for the PNGs")
    args = p.parse_args(argv)
    out = Path(args.out)
    for title, lengths, rows in tables_of(Path(args.table).read_text()):
        name = "niah" if title.startswith("S-NIAH") else "mqar"
        plot(rows, lengths, out / f"{name}.png", "S-NIAH" if name == "niah" else "MQAR")
        print(f"{out / f'{name}.png'}: {len(rows)} models, L = {lengths}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compile time per shipped spec: cold (parse, check, derive, render, write, import) in a fresh
cache, then cached (`mirasc.compile` again in a new process: hash and import).

    python benchmarks/compile_time.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import time, sys, torch; t = time.perf_counter(); import mirasc; "
    "mirasc.compile(sys.argv[1], cache_dir=sys.argv[2]); print(time.perf_counter() - t)"
)


def seconds(spec: Path, cache: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(spec), cache], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def main() -> int:
    print("seconds in a fresh process, after `import torch` (which takes ~2 s more)\n")
    print(f"{'spec':18s} {'cold':>7s} {'cached':>7s}")
    for spec in sorted((ROOT / "specs").glob("*.miras")):
        with tempfile.TemporaryDirectory() as cache:
            cold = seconds(spec, cache)
            warm = seconds(spec, cache)
        print(f"{spec.stem:18s} {cold:7.2f} {warm:7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

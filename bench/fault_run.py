"""The reference fault run from the command line, with any number of images.

    .venv/bin/python bench/fault_run.py --images 10000

Prints a table (listed, imported, dead-lettered by reason, duplicates, orphans, retries by kind,
faults injected) and exits 1 if any promise was broken: an image neither imported nor
dead-lettered, an unexpected dead letter, a duplicate row or an orphan object.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.testing.fault_run import run_fault_run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--workdir", type=Path, default=None, help="where reports go (default: a temp dir)")
    args, beam_args = parser.parse_known_args()
    logging.basicConfig(level=logging.ERROR)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fault-run-"))
    report = run_fault_run(args.images, workdir, seed=args.seed, extra_args=tuple(beam_args))
    print(report.table())
    print(f"reports: {workdir}")
    print("PASS: every listed image is imported or dead-lettered for its own fault" if report.ok else "FAIL")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

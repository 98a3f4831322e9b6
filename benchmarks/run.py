#!/usr/bin/env python3
"""`make bench`: the accuracy benchmark (q2-aam against the random forest).

Arguments pass through to benchmarks/accuracy.py (e.g. `--quick`); the full run
writes benchmarks/results.md. The speed benchmark is benchmarks/speed.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402

if __name__ == '__main__':
    accuracy.main(sys.argv[1:])

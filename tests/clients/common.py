"""Shared helpers of the client scripts: the reference data and comparisons."""

import json
import math
import sys
from pathlib import Path

TOLERANCE = 1e-4


def golden(reference_dir):
    """minilm_golden.json (tests/data/reference), parsed."""
    return json.loads((Path(reference_dir) / "minilm_golden.json").read_text())


def max_abs_diff(a, b):
    assert len(a) == len(b), f"lengths differ: {len(a)} vs {len(b)}"
    return max(abs(float(x) - float(y)) for x, y in zip(a, b))


def assert_close(got, expected, what):
    diff = max_abs_diff(got, expected)
    assert diff <= TOLERANCE, f"{what}: differs from the reference by {diff}"


def normalized(vector):
    norm = math.sqrt(sum(float(x) * float(x) for x in vector)) or 1e-12
    return [float(x) / norm for x in vector]


def dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b))


def main(run):
    """Runs `run(base_url, reference_dir)`; prints one line per check and fails loudly."""
    base, reference = sys.argv[1], sys.argv[2]
    checks = run(base, reference)
    for check in checks:
        print(f"ok: {check}")

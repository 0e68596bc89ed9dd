"""Fails unless every package pinned in requirements.txt is installed at exactly that version."""

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

problems = []
for line in (Path(__file__).parent / "requirements.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, pinned = line.split("==")
    try:
        installed = version(name)
    except PackageNotFoundError:
        problems.append(f"{name} is not installed (want {pinned})")
        continue
    if installed != pinned:
        problems.append(f"{name} {installed} is installed, want {pinned}")
if problems:
    sys.exit(
        f"{sys.executable}: " + "; ".join(problems)
        + ". Run scripts/install-test-clients and set SEALSERVE_CLIENTS_PYTHON as it says."
    )
print("ok: pinned client packages present")

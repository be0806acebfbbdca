"""Each benchmark script runs end to end in its --quick mode (small data, one repetition).

The numbers are not checked (a shared CI machine is too noisy for that); what is checked is that every
script still drives today's API, its peers and its services, and prints its table. A missing peer or
privilege is skipped with the reason, except under CI=true, where the scripts themselves fail on it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _services import in_ci

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

# (script, what its table must show, timeout in seconds). Together they take about 20 s.
CASES = [
    ("noop_checkpoint.py", "no-op / bare walk", 60),
    ("bulk_tmpfs.py", "throughput fractfs / cp", 60),
    ("s3_transfer.py", "restore 100 x 4 KiB", 120),
]


@pytest.mark.slow
@pytest.mark.parametrize(("script", "expect", "timeout"), CASES, ids=[c[0] for c in CASES])
def test_quick_run(script: str, expect: str, timeout: int, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["TMPDIR"] = str(tmp_path)  # whatever a crashed run leaves behind goes with the test's tmp dir
    r = subprocess.run([sys.executable, str(BENCH / script), "--quick"], cwd=BENCH, env=env,
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, f"{script} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    if expect not in r.stdout:
        if "note: skipped:" in r.stderr and not in_ci():
            pytest.skip(r.stderr.split("note: skipped:", 1)[1].strip().splitlines()[0])
        pytest.fail(f"{script} printed no result table:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    assert re.search(r"\d\.\d\dx", r.stdout), f"{script}: no ratio in its table:\n{r.stdout}"

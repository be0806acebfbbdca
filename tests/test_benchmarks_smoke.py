"""Each benchmark script runs end to end in its --quick mode (small data, one repetition).

The numbers are not checked (a shared CI machine is too noisy for that); what is checked is that every
script still drives today's API, its peers and its services, and prints its table with every peer in it.
A script that leaves a peer out says so on stderr ("note: skipping <peer>: ..."); that skips the test with
the reason, except under CI=true, where it fails (and the scripts themselves exit with an error).
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

# (script, what its table must show: rows and peer columns, timeout in seconds). Together about 60 s,
# plus about 45 s for cold_start.py (S3 included), 30 s for chunked_edit.py and 20 s for sqlite_watch.py on a
# loaded machine.
CASES = [
    ("noop_checkpoint.py", ["bare os.scandir walk", "walk + lstat per entry", "fractfs no-op checkpoint",
                            "no-op / bare walk"], 60),
    ("bulk_tmpfs.py", ["fractfs checkpoint", "cp -r", "throughput fractfs / cp"], 60),
    ("v2_edit.py", ["first checkpoint of 64 MiB (pipeline)", "4 KiB overwrite in the middle (one thread)",
                    "1 MiB append (pipeline)", "edit / first (pipeline"], 120),
    ("data_loss_window.py", ["| interval |", "| watch |", "lost", "window mean s"], 120),
    ("background_cost.py", ["| interval |", "| watch |", "| 0.05 ", "cpu % of a core", "window max s"], 120),
    ("s3_transfer.py", ["restore 100 x 4 KiB", "| fractfs |", "| s5cmd |", "| rclone |", "| fractfs 0.2.1 |",
                        "fractfs/fractfs 0.2.1"], 120),
    ("cold_start.py", ["cold init 300 (disk)", "cold init 300 (tmpfs)", "| tar -xf", "| cp -a",
                       "cold init 200 (S3)", "| s5cmd cp", "first checkpoint after cold init 300",
                       "git status (first, after clone)", "no-op checkpoint after it 300", "git status (again)",
                       "peak RSS MiB", "time per file (whole process) at 600"], 120),
    ("chunked_edit.py", ["| first checkpoint", "| 4 KiB overwrite in the middle", "| 4 KiB insert in the middle",
                         "| 4 KiB append", "snapshots, one 4 KiB edit each: store after prune", "| fractfs MiB",
                         "| fractfs v1 MiB", "| restic MiB", "| fractfs / first", "| fractfs / restic bytes"], 120),
    ("sqlite_watch.py", ["idle: daemon CPU % of a core", "| uploaded MiB (Volume growth",
                         "daemon CPU % of a core during the transactions", "data-loss window mean s",
                         "transactions never in a snapshot", "| fractfs |"], 90),
    ("chunk_restore.py", ["restore 64 MiB", "| fractfs |", "| s5cmd |", "| s5cmd + sync |", "fractfs/s5cmd"], 120),
]
#: measurements of fractfs alone (no peer to compare with, so no ratio)
NO_PEERS = {"data_loss_window.py", "background_cost.py", "sqlite_watch.py"}
#: how the scripts announce a peer or a privilege they had to do without (benchmarks/_bench.py and the
#: scripts' own handlers of a missing service)
SKIP_NOTE = re.compile(r"^note: skip(?:ping|ped):? (.*)$", re.MULTILINE)


@pytest.mark.slow
@pytest.mark.parametrize(("script", "expect", "timeout"), CASES, ids=[c[0] for c in CASES])
def test_quick_run(script: str, expect: list[str], timeout: int, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["TMPDIR"] = str(tmp_path)  # whatever a crashed run leaves behind goes with the test's tmp dir
    r = subprocess.run([sys.executable, str(BENCH / script), "--quick"], cwd=BENCH, env=env,
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, f"{script} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    skipped = SKIP_NOTE.findall(r.stderr)
    if skipped:
        if in_ci():
            pytest.fail(f"{script} left out: {'; '.join(skipped)}\n{r.stderr[-3000:]}")
        pytest.skip(f"{script} left out: {'; '.join(skipped)}")
    table = re.sub(r" {2,}", " ", r.stdout)  # column padding varies with the figures
    absent = [e for e in expect if re.sub(r" {2,}", " ", e) not in table]
    assert not absent, f"{script}: {absent} missing from its table:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    if script not in NO_PEERS:
        assert re.search(r"\d\.\d\dx", r.stdout), f"{script}: no ratio in its table:\n{r.stdout}"

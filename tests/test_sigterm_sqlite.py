"""SIGTERM torture, the short version for CI (issue 11, points 1 and 2): a busy app is stopped the way a
platform does it (SIGTERM, SIGKILL 10 s later), the node is wiped, and a cold node must restore everything the
app had acknowledged before the signal. ``benchmarks/torture_sqlite.py`` holds the machinery and runs the long
version; docs/reliability.md has its figures.

The sizes are the smallest that showed the bug with the default ``grace`` (8 s): the final checkpoint used to
assume 20 MiB/s before it had measured anything, so it declared a changed file over about 120 MB "out of time"
within milliseconds (copying it locally takes about a second), and it skipped files written more often than
every 30 ms as busy. The controls below that size passed then too: the harness finds nothing to complain
about when the final checkpoint does its job.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import torture_sqlite  # noqa: E402

pytestmark = pytest.mark.slow

ISSUE = "issue 11: "


def _run(work: Path, case: str, trials: int, **kw: object) -> list[torture_sqlite.Trial]:
    t = torture_sqlite.SigtermTorture(work, seed=11, **kw)  # type: ignore[arg-type]
    got = t.run([case], trials)
    for tr in got:
        print(torture_sqlite.line(tr))
    print(json.dumps(torture_sqlite.summary(got)))
    return got


def _assert_all_ok(got: list[torture_sqlite.Trial]) -> None:
    bad = [tr for tr in got if not tr.ok]
    assert not bad, "\n".join(torture_sqlite.line(tr) + "\n  " + json.dumps(asdict(tr)["final"]) for tr in bad)


def test_sigterm_keeps_every_committed_transaction_of_a_big_wal_database(tmp_path: Path) -> None:
    got = _run(tmp_path, "sqlite", 2, db_mb=(130.0, 140.0), max_delay=4.0)
    for tr in got:
        assert tr.integrity_ok, torture_sqlite.line(tr)  # a copy is never torn, even today
    _assert_all_ok(got)


def test_sigterm_keeps_a_late_edit_in_a_large_file(tmp_path: Path) -> None:
    _assert_all_ok(_run(tmp_path, "bigfile", 2, big_mib=160))


def test_sigterm_keeps_hot_files(tmp_path: Path) -> None:
    # three trials: under heavy load a starved writer can leave both files still for 30 ms, and the old code
    # then stored them (1 trial in 10 at load average 11); all three lucky would have hidden the bug
    _assert_all_ok(_run(tmp_path, "hot", 3, max_delay=3.0))


# -- controls: the same harness at sizes the old rate guess did fit (they passed before the fix too) ---------

def test_control_small_wal_database_loses_no_commit(tmp_path: Path) -> None:
    got = _run(tmp_path, "sqlite", 2, db_mb=(30.0, 40.0), max_delay=4.0)
    _assert_all_ok(got)
    assert all(tr.acked > 100 and tr.restored is not None and tr.restored >= tr.acked for tr in got)


def test_control_late_edit_in_a_mid_size_file_is_kept(tmp_path: Path) -> None:
    _assert_all_ok(_run(tmp_path, "bigfile", 1, big_mib=48))

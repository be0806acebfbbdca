"""Crash torture, the short version for CI: the app is SIGKILLed at random points of its checkpoints (pack and
object uploads, the manifest write, trimming, prune, listings, or a random moment), and every cold node must
restore exactly the last committed generation. ``benchmarks/torture.py`` holds the machinery and runs the long
version (``--trials 200``); docs/reliability.md has its figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import torture  # noqa: E402

pytestmark = pytest.mark.slow


def _run(kind: str, work: Path, volume_root: str, trials: int, seed: int, **kw: object) -> torture.Report:
    work.mkdir()
    # every cold node restores through the helper process (production uses it from 4096 small files on)
    t = torture.Torture(kind, work, volume_root, seed=seed, env={"fractfs_RESTORE_HELPER_MIN_FILES": "1"},
                        **kw)  # type: ignore[arg-type]
    rep = t.run(trials)
    print(json.dumps(rep.as_dict()))
    assert rep.failures == [], "\n".join(rep.failures)
    assert rep.restores_checked == trials + 1
    assert rep.generations_committed > trials
    return rep


@pytest.mark.parametrize("kind,trials", [("plain", 12), ("inplace", 6)])
def test_torture_on_a_local_volume(tmp_path: Path, plain_volume: Path, kind: str, trials: int) -> None:
    # "inplace" is the same directory written like a FUSE mount without rename: torn objects under final names
    rep = _run(kind, tmp_path / "node", str(plain_volume), trials, seed=100 + trials)
    assert sum(n for k, n in rep.kills.items() if k != "timer") >= 2, rep.kills


def test_torture_on_s3(tmp_path: Path, s3_url: str) -> None:
    _run("s3", tmp_path / "node", s3_url, 3, seed=5, big_every=0, lease_timeout=2.0)


def test_torture_on_fuse(tmp_path: Path, fuse_volume: Path) -> None:
    _run("fuse", tmp_path / "node", str(fuse_volume), 2, seed=6, big_every=0, lease_timeout=2.0)

"""fractfs.restore_target: where `fractfs restore --to` may write, and what a dry run would really write."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from operator_support import make_app, take_snapshot

from fractfs.config import Config
from fractfs.restore_target import SCRATCH_SUBDIR, identical_on_disk, restore_areas, restore_target_problem
from fractfs.stores.open import open_store


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_app(tmp_path)


def test_the_apps_own_places_are_refused(cfg: Config, tmp_path: Path) -> None:
    assert cfg.dirs_root is not None and cfg.checkpoint_location is not None
    cases = {
        cfg.root / "restored": "the app root",
        cfg.root: "the app root",
        cfg.scratch / "x": "the scratch directory",
        cfg.dirs_root / "data" / "blobs" / "copy": "the [dirs] directory 'data/blobs'",
        Path(cfg.checkpoint_location) / "copy": "the checkpoint area",
    }
    for to, what in cases.items():
        problem = restore_target_problem(cfg, to)
        assert problem is not None and what in problem and problem.startswith(f"--to {to} is inside"), to
    assert restore_target_problem(cfg, tmp_path / "elsewhere") is None
    assert restore_target_problem(cfg, cfg.dirs_root / "other") is None  # the Volume, outside every [dirs] dir


def test_a_symlink_into_the_app_is_refused(cfg: Config, tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky"
    os.symlink(cfg.root, sneaky)
    problem = restore_target_problem(cfg, sneaky / "sub")
    assert problem is not None and "the app root" in problem


def test_restore_areas(cfg: Config, tmp_path: Path) -> None:
    assert restore_areas(cfg, None) == {"root": cfg.root, "scratch": cfg.scratch}
    to = tmp_path / "out"
    assert restore_areas(cfg, to) == {"root": to, "scratch": to / SCRATCH_SUBDIR}
    rel = restore_areas(cfg, Path("relative-out"))
    assert rel["root"].is_absolute() and rel["root"] == Path(os.path.abspath("relative-out"))


def test_identical_on_disk_hashes_the_candidates(cfg: Config) -> None:
    for name, text in {"same.txt": "same", "differs.txt": "old", "size.txt": "x"}.items():
        (cfg.root / name).write_text(text)
    sid = take_snapshot(cfg)
    (cfg.root / "differs.txt").write_text("new")  # same size, other bytes: only hashing tells
    (cfg.root / "size.txt").write_text("xx")
    (cfg.root / "gone.txt").write_text("g")
    labels = ["root:same.txt", "root:differs.txt", "root:size.txt", "root:missing.txt"]
    same = identical_on_disk(open_store(cfg), sid, labels, {"root": cfg.root, "scratch": cfg.scratch})
    assert same == {"root:same.txt"}
    assert identical_on_disk(open_store(cfg), "not-an-id", labels, {"root": cfg.root}) == set()

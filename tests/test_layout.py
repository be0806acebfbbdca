"""fractfs.layout: what a [dirs] entry and a pin are on disk right now, as status and doctor report them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from operator_support import make_app

from fractfs.config import Config
from fractfs.layout import dir_state, pin_for, pin_in_place
from fractfs.provision import plan_pins, provision
from fractfs.tiers import TierResolver


def _state(cfg: Config, d: str = "data/blobs") -> dict[str, Any]:
    return dict(dir_state(cfg, TierResolver(cfg), d))


def test_every_state_of_a_dirs_entry(tmp_path: Path) -> None:
    cfg = make_app(tmp_path)
    local = cfg.root / "data" / "blobs"
    assert cfg.dirs_root is not None
    target = cfg.dirs_root / "data" / "blobs"
    st = _state(cfg)
    assert st["state"] == "missing" and st["linked"] is False and st["target"] == str(target)
    assert st["local_path"] == str(local) and st["tier"] == "dirs"

    local.mkdir(parents=True)
    assert _state(cfg)["state"] == "empty-dir"
    (local / "x").write_text("data")
    assert _state(cfg)["state"] == "real-dir"
    (local / "x").unlink()
    local.rmdir()
    local.write_text("a file")
    assert _state(cfg)["state"] == "file"
    local.unlink()

    os.symlink(tmp_path / "elsewhere", local)
    st = _state(cfg)
    assert st["state"] == "elsewhere" and st["points_to"] == str(tmp_path / "elsewhere") and not st["linked"]
    local.unlink()

    os.symlink(target, local)
    st = _state(cfg)
    assert st["state"] == "dangling" and st["linked"] is True and "Volume not mounted" in st["detail"]
    target.mkdir(parents=True)
    assert _state(cfg)["state"] == "linked"
    # a relative link that resolves to the target counts as linked too
    local.unlink()
    os.symlink(os.path.relpath(target, local.parent), local)
    assert _state(cfg)["state"] == "linked"


def test_a_dirs_entry_that_a_pattern_keeps_local(tmp_path: Path) -> None:
    cfg = make_app(tmp_path, "[dirs]\npaths = [\"cache\"]\n[local]\npatterns = [\"cache/\"]\n")
    st = _state(cfg, "cache")
    assert st["state"] == "kept-local" and st["tier"] == "local" and "[local] 'cache/'" in st["detail"]


def test_pins_found_and_checked_in_place(tmp_path: Path) -> None:
    cfg = make_app(tmp_path)
    resolver = TierResolver(cfg)
    pins = plan_pins(cfg, resolver).pins
    manifest = pin_for(pins, "data/blobs/manifest.json")
    locks = pin_for(pins, "data/blobs/.locks/a/b")
    assert manifest is not None and manifest.relpath == "data/blobs/manifest.json"
    assert locks is not None and locks.is_dir and locks.relpath == "data/blobs/.locks"
    assert pin_for(pins, "data/blobs/blob.bin") is None
    assert not pin_in_place(cfg, manifest)
    provision(cfg, resolver)
    assert pin_in_place(cfg, manifest) and pin_in_place(cfg, locks)
    assert dir_state(cfg, resolver, "data/blobs")["state"] == "linked"

"""fractfs.doctor: each finding with its level and its fix, on a healthy and on broken setups."""
from __future__ import annotations

import shutil
from pathlib import Path

from operator_support import make_app, take_snapshot

from fractfs.config import Config, load_config
from fractfs.doctor import Doctor, Finding, doctor
from fractfs.lease import Lease
from fractfs.provision import provision
from fractfs.snapshot import catalog
from fractfs.stores.open import open_store
from fractfs.tiers import TierResolver


def _by_level(findings: list[Finding], level: str) -> list[str]:
    return [f.what for f in findings if f.level == level]


def _healthy(tmp_path: Path) -> Config:
    cfg = make_app(tmp_path)
    provision(cfg, TierResolver(cfg))
    (cfg.root / "state.txt").write_text("s")
    take_snapshot(cfg)
    return cfg


def test_a_healthy_setup_has_no_failure(tmp_path: Path) -> None:
    cfg = _healthy(tmp_path)
    findings = doctor(cfg)
    assert not _by_level(findings, "FAIL"), findings
    oks = _by_level(findings, "ok")
    assert any(w.startswith(f"config: {cfg.config_file} is valid") for w in oks)
    assert any("reachable and writable" in w for w in oks)
    assert any(w.startswith("store ") and "reachable, 1 snapshot(s)" in w for w in oks)
    assert any("writable (probe object written, read back and deleted)" in w for w in oks)
    assert any(w.startswith("snapshots: newest 1-") for w in oks)
    assert any(w == f"[dirs] data/blobs: linked to {cfg.dirs_root / 'data/blobs'}" for w in oks if cfg.dirs_root)
    assert any(w.startswith("pins: 2 in place") for w in oks)
    # the same tmp filesystem: checkpoints would go with the node's disk, which doctor warns about
    assert any("same filesystem" in w for w in _by_level(findings, "warn"))
    # the write probe leaves nothing behind
    assert not [k for k, _ in open_store(cfg).list("fractfs-doctor/")]
    assert all(f.as_dict().keys() == {"level", "what", "fix"} for f in findings)


def test_an_unmounted_volume_fails_with_what_to_do(tmp_path: Path) -> None:
    cfg = _healthy(tmp_path)
    assert cfg.volume_root is not None
    shutil.rmtree(cfg.volume_root)
    d = Doctor(cfg)
    findings = d.run()
    assert d.failed
    fails = {f.what: f.fix for f in findings if f.level == "FAIL"}
    vol = next(w for w in fails if w.startswith("Volume ") and "not reachable" in w)
    assert fails[vol].startswith("mount the Volume")
    assert any("not checked, the Volume is not usable" in w for w in fails)
    assert any(w.startswith("[dirs] data/blobs:") and "does not exist" in w for w in fails)
    assert not Path(cfg.volume_root).exists()


def test_damaged_newest_snapshot_and_a_real_dir_in_the_way(tmp_path: Path) -> None:
    cfg = _healthy(tmp_path)
    store = open_store(cfg)
    (cfg.root / "state.txt").write_text("changed")
    take_snapshot(cfg)
    newest = catalog.list_names(store)[-1]
    store.put(newest.key, b"not a manifest")
    link = cfg.root / "data" / "blobs"
    link.unlink()
    link.mkdir()
    (link / "x").write_text("in the way")
    findings = doctor(cfg)
    fails = {f.what: f.fix for f in findings if f.level == "FAIL"}
    damaged = next(w for w in fails if w.startswith("snapshots: the newest 1 are damaged"))
    assert newest.short in damaged and "fall back to 1-" in damaged and "verify --all" in fails[damaged]
    real = next(w for w in fails if "non-empty real directory" in w)
    assert "force=True" in fails[real]


def test_lease_findings(tmp_path: Path) -> None:
    cfg = _healthy(tmp_path)
    other = Lease(open_store(cfg), "other-node:7:abc", 30.0)
    other.tick()
    assert any(w.startswith("lease: held by other-node:7:abc") for w in _by_level(doctor(cfg), "ok"))
    other.release()
    assert not [w for w in _by_level(doctor(cfg), "ok") if w.startswith("lease: held")]


def test_passthrough_only_checks_config_and_scratch(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    cfg = load_config(root, env={"fractfs_SCRATCH": str(tmp_path / "scratch")})
    findings = doctor(cfg)
    assert any("passthrough" in w for w in _by_level(findings, "warn"))
    assert any(w.startswith("scratch ") for w in _by_level(findings, "ok"))
    assert not any(f.what.startswith(("Volume", "store")) for f in findings)

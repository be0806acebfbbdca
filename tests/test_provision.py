"""Provisioning through the module API on real volumes: plain dir, tmpfs (cross-device) and rclone FUSE.

The interruption tests kill a real child process with SIGKILL at a chosen point of the migration (the
child patches one internal helper to know *when*; the kill itself is real), then re-run in-process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import run_py

from fractfs.config import Config
from fractfs.errors import ClobberError, ProvisionError
from fractfs.provision import (
    CONFLICT_SUFFIX,
    Capabilities,
    PinPlan,
    ProvisionReport,
    plan_pins,
    probe_volume,
    provision,
)
from fractfs.tiers import Tier, TierResolver

# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def vol_kind(request: pytest.FixtureRequest) -> str:
    """ "plain" | "tmpfs" | "fuse" for tests using the parametrized ``volume`` fixture."""
    return str(request.node.callspec.params["volume"])


@pytest.fixture(params=["plain", "tmpfs"])
def symlink_volume(request: pytest.FixtureRequest) -> Path:
    """The volume kinds that support symlinks (pins are only possible there)."""
    path: Path = request.getfixturevalue(f"{request.param}_volume")
    return path


@pytest.fixture(params=["tmpfs", "fuse"])
def foreign_volume(request: pytest.FixtureRequest) -> Path:
    """Volumes on another filesystem than the app: every move is copy → fsync → verify → remove."""
    path: Path = request.getfixturevalue(f"{request.param}_volume")
    return path


def make_config(
    tmp_path: Path,
    vol: Path,
    *,
    dirs: tuple[str, ...] = ("data/blobs", "exports"),
    local: tuple[str, ...] = (),
    ignore: tuple[str, ...] = (),
    root: Path | None = None,
    scratch: Path | None = None,
) -> Config:
    root = root or tmp_path / "app"
    root.mkdir(parents=True, exist_ok=True)
    return Config(
        root=root,
        config_file=None,
        backend="volumes",
        volume_root=str(vol),
        dirs_root=vol,
        scratch=scratch or tmp_path / "scratch",
        dirs=dirs,
        local_patterns=local,
        ignore_patterns=ignore,
    )


def run(cfg: Config, **kw: Any) -> ProvisionReport:
    return provision(cfg, TierResolver(cfg), **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(top: Path, *, inodes: bool = False) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``top`` (symlinks not followed): kind + content hash / link target (+ inode)."""
    out: dict[str, tuple[Any, ...]] = {}
    if not os.path.lexists(top):
        return out
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = p.relative_to(top).as_posix()
            extra = (st.st_ino, st.st_mtime_ns) if inodes else ()
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p), *extra)
            elif p.is_dir():
                out[rel] = ("dir", *extra)
            else:
                out[rel] = ("file", sha(p), oct(st.st_mode & 0o777), *extra)
    return out


def populate(base: Path, count: int = 12) -> dict[str, str]:
    """A tree with nested dirs, an empty file, a 1-byte file and one bigger than a copy chunk."""
    files: dict[str, bytes] = {
        "empty.bin": b"",
        "one.bin": b"x",
        "big/huge.bin": os.urandom(3 * 1024 * 1024 + 17),
        "deep/a/b/c/leaf.txt": b"leaf\n",
    }
    for i in range(count):
        files[f"part={i % 3}/file-{i:03d}.parquet"] = os.urandom(1000 + 977 * i)
    for rel, data in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (base / "empty-subdir").mkdir()
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def volume_files(top: Path) -> dict[str, str]:
    return {rel: v[1] for rel, v in tree(top).items() if v[0] == "file"}


# ---------------------------------------------------------------------------------------------------------
# capability probe
# ---------------------------------------------------------------------------------------------------------


def test_probe_values(volume: Path, vol_kind: str, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    caps = probe_volume(volume, app_root=app)
    assert caps.exists and caps.writable
    assert caps.path == str(volume)
    assert caps.cross_device is (vol_kind != "plain")
    assert caps.symlinks is (vol_kind != "fuse")
    assert caps.rename is True
    expected_fs = {"plain": None, "tmpfs": "tmpfs", "fuse": "fuse.rclone"}[vol_kind]
    if expected_fs is not None:
        assert caps.fs_type == expected_fs
    assert caps.fs_type
    assert caps.free_bytes is not None and caps.free_bytes > 0
    assert json.loads(json.dumps(caps.as_dict()))["symlinks"] is caps.symlinks
    assert not [n for n in os.listdir(volume) if n.startswith(".fractfs-probe")]


def test_probe_unreachable_volume(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    with pytest.raises(ProvisionError) as err:
        probe_volume(missing, app_root=tmp_path)
    assert str(missing) in str(err.value) and "fractfs_VOLUME_ROOT" in str(err.value)
    soft = probe_volume(missing, app_root=tmp_path, strict=False)
    assert (soft.exists, soft.writable, soft.symlinks) == (False, False, False)
    assert soft.error and str(missing) in soft.error


def test_probe_unwritable_volume(tmpfs_factory: Callable[..., Path], tmp_path: Path) -> None:
    vol = tmpfs_factory("4m")
    subprocess.run(["mount", "-o", "remount,ro", str(vol)], check=True)
    with pytest.raises(ProvisionError) as err:
        probe_volume(vol, app_root=tmp_path)
    assert str(vol) in str(err.value) and "not writable" in str(err.value)
    assert "permissions" in str(err.value)


def test_provision_unreachable_volume_names_path(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, tmp_path / "gone" / "vol")
    with pytest.raises(ProvisionError, match="not reachable"):
        run(cfg)
    # a missing mount point is never created: that would silently put "durable" data on local disk
    assert not (tmp_path / "gone").exists()
    assert not (cfg.root / "data").exists()


# ---------------------------------------------------------------------------------------------------------
# [dirs] links
# ---------------------------------------------------------------------------------------------------------


def test_links_created_and_idempotent(volume: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, volume, local=("manifest.json",), ignore=(".locks/",))
    report = run(cfg)
    assert sorted(report.linked) == ["data/blobs", "exports"]
    for d in cfg.dirs:
        local = cfg.root / d
        assert local.is_symlink() and os.readlink(local) == str(volume / d)
        assert (volume / d).is_dir()
    (cfg.root / "data/blobs/x.parquet").write_bytes(b"blob")
    assert (volume / "data/blobs/x.parquet").read_bytes() == b"blob"

    before = (tree(cfg.root, inodes=True), tree(volume, inodes=True), tree(cfg.scratch, inodes=True))
    again = run(cfg)
    assert not again.changed
    assert again.linked == [] and again.migrated == [] and again.new_pins == []
    assert again.pins == report.pins and again.unpinned == report.unpinned
    after = (tree(cfg.root, inodes=True), tree(volume, inodes=True), tree(cfg.scratch, inodes=True))
    assert after == before
    assert json.loads(json.dumps(again.as_dict()))["capabilities"]["path"] == str(volume)


def test_relink_when_pointing_elsewhere(
    volume: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(tmp_path, volume, dirs=("data/blobs",))
    old = tmp_path / "old-volume" / "blobs"
    old.mkdir(parents=True)
    (old / "keep.bin").write_bytes(b"old data")
    (cfg.root / "data").mkdir()
    os.symlink(old, cfg.root / "data/blobs")
    with caplog.at_level(logging.WARNING, logger="fractfs"):
        report = run(cfg)
    assert report.linked == ["data/blobs"]
    assert os.readlink(cfg.root / "data/blobs") == str(volume / "data/blobs")
    assert (old / "keep.bin").read_bytes() == b"old data"  # the old target is never touched
    assert any(str(old) in w for w in report.warnings)
    assert any(str(old) in r.getMessage() for r in caplog.records)


def test_relative_link_to_the_volume_is_accepted(tmp_path: Path, plain_volume: Path) -> None:
    cfg = make_config(tmp_path, plain_volume, dirs=("data/blobs",))
    (cfg.root / "data").mkdir()
    (plain_volume / "data/blobs").mkdir(parents=True)
    os.symlink(os.path.relpath(plain_volume / "data/blobs", cfg.root / "data"), cfg.root / "data/blobs")
    assert run(cfg).linked == []


def test_empty_local_dir_is_replaced(volume: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, volume, dirs=("data/blobs",))
    (cfg.root / "data/blobs").mkdir(parents=True)
    report = run(cfg)
    assert report.linked == ["data/blobs"]
    assert (cfg.root / "data/blobs").is_symlink()


def test_clobber_guard_raises_and_touches_nothing(volume: Path, tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path, volume, dirs=("data/blobs", "exports", "cache/parquet"), local=("manifest.json",)
    )
    populate(cfg.root / "data/blobs", count=3)
    (cfg.root / "exports").write_bytes(b"a file where a directory link must go")
    (cfg.root / "unrelated.txt").write_text("hi")
    app_before, vol_before = tree(cfg.root, inodes=True), tree(volume, inodes=True)

    with pytest.raises(ClobberError) as err:
        run(cfg)
    message = str(err.value)
    assert str(cfg.root / "data/blobs") in message and str(cfg.root / "exports") in message
    assert "force=True" in message
    assert tree(cfg.root, inodes=True) == app_before
    assert tree(volume, inodes=True) == vol_before
    assert not (cfg.root / "cache").exists()  # not even the clean [dirs] entry was linked

    # force migrates directories, but a file in the way still needs a human
    with pytest.raises(ClobberError, match="only migrates directories"):
        run(cfg, force=True)
    assert tree(cfg.root, inodes=True) == app_before


# ---------------------------------------------------------------------------------------------------------
# migration (force=True)
# ---------------------------------------------------------------------------------------------------------


def test_force_migration_preserves_every_byte(volume: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, volume, dirs=("data/blobs",))
    expected = populate(cfg.root / "data/blobs")
    (cfg.root / "data/blobs/one.bin").chmod(0o640)

    report = run(cfg, force=True)
    assert report.linked == ["data/blobs"]
    assert sorted(report.migrated) == sorted(f"data/blobs/{r}" for r in expected)
    assert report.conflicts == []
    link = cfg.root / "data/blobs"
    assert link.is_symlink()
    assert {r: sha(link / r) for r in expected} == expected
    assert volume_files(volume / "data/blobs") == expected  # nothing extra: no partials, no conflicts
    assert (volume / "data/blobs/empty-subdir").is_dir()
    assert not run(cfg).changed


def test_force_migration_keeps_both_versions_on_conflict(foreign_volume: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, foreign_volume, dirs=("data/blobs",))
    (cfg.root / "data/blobs").mkdir(parents=True)
    (cfg.root / "data/blobs/same.bin").write_bytes(b"same")
    (cfg.root / "data/blobs/differs.bin").write_bytes(b"local version")
    (foreign_volume / "data/blobs").mkdir(parents=True)
    (foreign_volume / "data/blobs/same.bin").write_bytes(b"same")
    (foreign_volume / "data/blobs/differs.bin").write_bytes(b"volume version")

    report = run(cfg, force=True)
    blobs = foreign_volume / "data/blobs"
    conflict = blobs / f"differs.bin{CONFLICT_SUFFIX}-1"
    assert (blobs / "differs.bin").read_bytes() == b"volume version"  # never overwritten
    assert conflict.read_bytes() == b"local version"
    assert (blobs / "same.bin").read_bytes() == b"same"
    assert report.conflicts == [str(conflict)]
    assert any(str(conflict) in w for w in report.warnings)
    assert sorted(os.listdir(blobs)) == sorted(["same.bin", "differs.bin", conflict.name])


def test_migration_recreates_symlinks(symlink_volume: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, symlink_volume, dirs=("data/blobs",))
    base = cfg.root / "data/blobs"
    (base / "real").mkdir(parents=True)
    (base / "real/file.txt").write_text("content")
    os.symlink("real/file.txt", base / "alias.txt")
    os.symlink("real", base / "alias-dir")
    run(cfg, force=True)
    vol = symlink_volume / "data/blobs"
    assert os.readlink(vol / "alias.txt") == "real/file.txt"
    assert os.readlink(vol / "alias-dir") == "real"
    assert (cfg.root / "data/blobs/alias.txt").read_text() == "content"


def test_migration_refuses_symlinks_on_fuse_before_touching_anything(
    fuse_volume: Path, tmp_path: Path
) -> None:
    cfg = make_config(tmp_path, fuse_volume, dirs=("data/blobs",))
    base = cfg.root / "data/blobs"
    populate(base, count=2)
    os.symlink("one.bin", base / "alias.bin")
    before = tree(cfg.root, inodes=True)
    with pytest.raises(ProvisionError) as err:
        run(cfg, force=True)
    assert "symlink" in str(err.value) and str(base / "alias.bin") in str(err.value)
    assert tree(cfg.root, inodes=True) == before
    assert volume_files(fuse_volume) == {}


_CHILD = """
import dataclasses, json, os, signal, sys
from pathlib import Path
from fractfs.config import Config
from fractfs.tiers import TierResolver
import fractfs.provision as P
import fractfs.provision.layout as layout
import fractfs.provision.migrate as migrate

args = json.loads({args!r})
cfg = Config(root=Path(args["root"]), config_file=None, backend="volumes", volume_root=args["vol"],
             dirs_root=Path(args["vol"]), scratch=Path(args["scratch"]), dirs=tuple(args["dirs"]),
             local_patterns=tuple(args["local"]), ignore_patterns=())
calls = {{"n": 0}}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if args["no_rename"]:
    real_probe = layout.probe_volume
    layout.probe_volume = lambda *a, **k: dataclasses.replace(real_probe(*a, **k), rename=False)

if args["crash"] == "between_files":
    real_move = migrate.Mover.move
    def move(self, src, dst, **kw):
        if calls["n"] == args["after"]:
            die()
        calls["n"] += 1
        return real_move(self, src, dst, **kw)
    migrate.Mover.move = move
elif args["crash"] == "mid_copy":
    real_copy = migrate.copy_bytes
    def copy(src, dst, size):
        if calls["n"] == args["after"]:
            with open(src, "rb") as fin, open(dst, "wb") as fout:   # half a file, then the lights go out
                fout.write(fin.read(size // 2))
                fout.flush()
                os.fsync(fout.fileno())
            die()
        calls["n"] += 1
        return real_copy(src, dst, size)
    migrate.copy_bytes = copy
elif args["crash"] == "before_remove":
    real_unlink = migrate.unlink_synced
    def unlink(path):
        if str(path).startswith(args["root"]):   # a migrated source, verified on the other side
            if calls["n"] == args["after"]:
                die()
            calls["n"] += 1
        return real_unlink(path)
    migrate.unlink_synced = unlink

P.provision(cfg, TierResolver(cfg), force=True)
print("completed")
"""


# A plain-dir Volume shares the app's filesystem: files are renamed there, so only the crash *between* files
# applies; the copy-level crash points need a Volume on another filesystem.
_CRASHES = [(kind, "between_files", False) for kind in ("plain", "tmpfs", "fuse")] + [
    (kind, crash, no_rename)
    for kind in ("tmpfs", "fuse")
    for crash, no_rename in (("mid_copy", False), ("mid_copy", True), ("before_remove", False))
]


@pytest.mark.parametrize("vol_kind,crash,no_rename", _CRASHES)
def test_interrupted_migration_resumes(
    request: pytest.FixtureRequest, vol_kind: str, tmp_path: Path, crash: str, no_rename: bool
) -> None:
    volume: Path = request.getfixturevalue(f"{vol_kind}_volume")
    cfg = make_config(tmp_path, volume, dirs=("data/blobs",), local=("manifest.json",))
    expected = populate(cfg.root / "data/blobs", count=15)
    (cfg.root / "data/blobs/manifest.json").write_text('{"v": 1}')
    expected["manifest.json"] = sha(cfg.root / "data/blobs/manifest.json")
    args = {
        "root": str(cfg.root),
        "vol": str(volume),
        "scratch": str(cfg.scratch),
        "dirs": list(cfg.dirs),
        "local": list(cfg.local_patterns),
        "crash": crash,
        "after": 5,
        "no_rename": no_rename,
    }

    proc = run_py(_CHILD.format(args=json.dumps(args)), check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    local_left = volume_files(cfg.root / "data/blobs")
    assert 0 < len(local_left) < len(expected)  # really stopped half way
    if crash == "mid_copy":
        vol_names = [p.name for p in (volume / "data/blobs").rglob("*")]
        if no_rename:
            assert (cfg.scratch / ".fractfs-state/inflight.json").exists()
        else:
            assert any(n.endswith(".fractfs-partial") for n in vol_names)

    report = run(cfg, force=True)
    link = cfg.root / "data/blobs"
    assert link.is_symlink()
    assert {r: sha(link / r) for r in expected} == expected  # every byte, through the app's path
    assert report.conflicts == []
    on_volume = volume_files(volume / "data/blobs")
    if vol_kind == "fuse":  # no symlinks: the manifest pin is not honoured, the file lives on the Volume
        assert on_volume == expected
    else:
        assert on_volume == {r: h for r, h in expected.items() if r != "manifest.json"}
        assert sha(cfg.scratch / "data/blobs/manifest.json") == expected["manifest.json"]
    assert not (cfg.scratch / ".fractfs-state/inflight.json").exists()
    assert not run(cfg).changed


def test_concurrent_provisioning_is_serialised(symlink_volume: Path, tmp_path: Path) -> None:
    """Several workers of one app call init() at once: one migrates, the others find it done."""
    cfg = make_config(tmp_path, symlink_volume, dirs=("data/blobs",))
    expected = populate(cfg.root / "data/blobs", count=30)
    code = _CHILD.format(
        args=json.dumps(
            {
                "root": str(cfg.root),
                "vol": str(symlink_volume),
                "scratch": str(cfg.scratch),
                "dirs": list(cfg.dirs),
                "local": [],
                "crash": "none",
                "after": 0,
                "no_rename": False,
            }
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent / "src")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    for p in procs:
        _out, errs = p.communicate(timeout=120)
        assert p.returncode == 0, errs
    link = cfg.root / "data/blobs"
    assert {r: sha(link / r) for r in expected} == expected
    assert volume_files(symlink_volume / "data/blobs") == expected


# ---------------------------------------------------------------------------------------------------------
# pins
# ---------------------------------------------------------------------------------------------------------


def test_exact_pin_write_lands_in_scratch(symlink_volume: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, symlink_volume, local=("manifest.json",))
    report = run(cfg)
    assert report.pins == ["data/blobs/manifest.json", "exports/manifest.json"]
    assert report.unpinned == []
    pin = symlink_volume / "data/blobs/manifest.json"
    assert os.readlink(pin) == str(cfg.scratch / "data/blobs/manifest.json")  # dangling until written

    (cfg.root / "data/blobs/manifest.json").write_text('{"rows": 3}')  # the app's first write
    assert (cfg.scratch / "data/blobs/manifest.json").read_text() == '{"rows": 3}'
    assert pin.is_symlink()  # the Volume only ever holds the link
    (cfg.root / "data/blobs/x.parquet").write_bytes(b"big")  # everything else still goes to the Volume
    assert (symlink_volume / "data/blobs/x.parquet").read_bytes() == b"big"


def test_anchored_pin(symlink_volume: Path, tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        symlink_volume,
        local=("data/blobs/sub/index.sqlite", "/exports/state.db", "elsewhere/file.json"),
    )
    report = run(cfg)
    assert report.pins == ["data/blobs/sub/index.sqlite", "exports/state.db"]
    (cfg.root / "data/blobs/sub/index.sqlite").write_bytes(b"db")
    assert (cfg.scratch / "data/blobs/sub/index.sqlite").read_bytes() == b"db"
    assert not (symlink_volume / "elsewhere").exists()


def test_directory_pin(symlink_volume: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, symlink_volume, ignore=(".locks/", "data/blobs/tmp/"))
    report = run(cfg)
    assert report.pins == ["data/blobs/.locks/", "data/blobs/tmp/", "exports/.locks/"]
    assert os.readlink(symlink_volume / "data/blobs/.locks") == str(cfg.scratch / "data/blobs/.locks")
    assert (cfg.scratch / "exports/.locks").is_dir()
    (cfg.root / "data/blobs/.locks/anything-42.lock").write_text("pid")
    (cfg.root / "data/blobs/tmp/part.partial").write_text("tmp")
    assert (cfg.scratch / "data/blobs/.locks/anything-42.lock").read_text() == "pid"
    assert (cfg.scratch / "data/blobs/tmp/part.partial").read_text() == "tmp"
    assert volume_files(symlink_volume) == {}


def test_pins_follow_the_resolver(symlink_volume: Path, tmp_path: Path) -> None:
    # a negation re-includes one path (no pin there); the other [dirs] dir is still pinned
    cfg = make_config(tmp_path, symlink_volume, local=("manifest.json", "!data/blobs/manifest.json"))
    assert run(cfg).pins == ["exports/manifest.json"]
    assert not os.path.lexists(symlink_volume / "data/blobs/manifest.json")


def test_existing_volume_file_moved_down(symlink_volume: Path, tmp_path: Path) -> None:
    volume = symlink_volume  # FUSE has no symlinks, so nothing is moved down there (see test_fuse_*)
    cfg = make_config(tmp_path, volume, local=("manifest.json",), ignore=(".locks/",))
    (volume / "data/blobs/.locks/deep").mkdir(parents=True)
    (volume / "data/blobs/manifest.json").write_text("from the volume")
    (volume / "data/blobs/.locks/deep/a.lock").write_text("lock")
    report = run(cfg)
    assert sorted(report.moved_down) == ["data/blobs/.locks/", "data/blobs/manifest.json"]
    assert (volume / "data/blobs/manifest.json").is_symlink()
    assert (cfg.scratch / "data/blobs/manifest.json").read_text() == "from the volume"
    assert (cfg.scratch / "data/blobs/.locks/deep/a.lock").read_text() == "lock"
    assert (cfg.root / "data/blobs/manifest.json").read_text() == "from the volume"
    assert not run(cfg).changed


@pytest.mark.parametrize("newer", ["volume", "scratch"])
def test_pin_conflict_keeps_newer_and_the_other_on_the_volume(
    symlink_volume: Path, tmp_path: Path, newer: str
) -> None:
    cfg = make_config(tmp_path, symlink_volume, dirs=("data/blobs",), local=("manifest.json",))
    on_vol = symlink_volume / "data/blobs/manifest.json"
    in_scratch = cfg.scratch / "data/blobs/manifest.json"
    on_vol.parent.mkdir(parents=True)
    in_scratch.parent.mkdir(parents=True)
    on_vol.write_text("volume version")
    in_scratch.write_text("scratch version")
    old, new = (in_scratch, on_vol) if newer == "volume" else (on_vol, in_scratch)
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    winner, loser = (
        ("volume version", "scratch version") if newer == "volume" else ("scratch version", "volume version")
    )

    report = run(cfg)
    conflict = symlink_volume / f"data/blobs/manifest.json{CONFLICT_SUFFIX}-1"
    assert on_vol.is_symlink() and in_scratch.read_text() == winner
    assert conflict.read_text() == loser
    assert report.conflicts == [str(conflict)]
    assert not run(cfg).changed


def test_glob_warning(volume: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config(tmp_path, volume, local=("*.lock", "logs/*.log"), ignore=("data/*/scratch-*.tmp",))
    with caplog.at_level(logging.WARNING, logger="fractfs"):
        report = run(cfg)
    glob_warnings = [w for w in report.warnings if "glob" in w]
    assert len(glob_warnings) == 2  # "logs/*.log" cannot match inside data/blobs or exports
    lock = next(w for w in glob_warnings if "'*.lock'" in w)
    assert "data/blobs" in lock and "exports" in lock and "lands on the Volume" in lock
    assert "directory pattern" in lock
    assert any("'*.lock'" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert report.pins == []


def test_migration_routes_pinned_files_to_scratch(foreign_volume: Path, tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path, foreign_volume, dirs=("data/blobs",), local=("manifest.json",), ignore=(".locks/",)
    )
    base = cfg.root / "data/blobs"
    (base / ".locks").mkdir(parents=True)
    (base / "manifest.json").write_text("m")
    (base / ".locks/w.lock").write_text("l")
    (base / "x.parquet").write_bytes(b"p")
    report = run(cfg, force=True)
    symlinks = report.capabilities is not None and report.capabilities.symlinks
    if symlinks:
        assert (cfg.scratch / "data/blobs/manifest.json").read_text() == "m"
        assert (cfg.scratch / "data/blobs/.locks/w.lock").read_text() == "l"
        assert volume_files(foreign_volume) == {
            "data/blobs/x.parquet": sha(cfg.root / "data/blobs/x.parquet")
        }
    else:
        assert sorted(volume_files(foreign_volume)) == [
            "data/blobs/.locks/w.lock",
            "data/blobs/manifest.json",
            "data/blobs/x.parquet",
        ]
    assert (cfg.root / "data/blobs/manifest.json").read_text() == "m"


def test_migration_conflict_next_to_a_file_pin_is_kept_on_the_volume(
    symlink_volume: Path, tmp_path: Path
) -> None:
    cfg = make_config(tmp_path, symlink_volume, dirs=("data/blobs",), local=("manifest.json",))
    (cfg.scratch / "data/blobs").mkdir(parents=True)
    (cfg.scratch / "data/blobs/manifest.json").write_text("scratch version")
    (cfg.root / "data/blobs").mkdir(parents=True)
    (cfg.root / "data/blobs/manifest.json").write_text("local version")
    report = run(cfg, force=True)
    conflict = symlink_volume / f"data/blobs/manifest.json{CONFLICT_SUFFIX}-1"
    assert report.conflicts == [str(conflict)]
    assert conflict.read_text() == "local version" and not conflict.is_symlink()
    assert (cfg.root / "data/blobs/manifest.json").read_text() == "scratch version"
    assert (cfg.root / f"data/blobs/manifest.json{CONFLICT_SUFFIX}-1").read_text() == "local version"


def test_volume_without_rename(tmpfs_volume: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Symlinks but no rename (some FUSE mounts): links are placed directly, copies go to their final name."""
    import fractfs.provision.layout as layout

    real_probe = layout.probe_volume
    monkeypatch.setattr(
        layout, "probe_volume", lambda *a, **k: dataclasses.replace(real_probe(*a, **k), rename=False)
    )
    cfg = make_config(tmp_path, tmpfs_volume, dirs=("data/blobs",), local=("manifest.json",))
    expected = populate(cfg.root / "data/blobs", count=4)
    (tmpfs_volume / "data/blobs").mkdir(parents=True)
    (tmpfs_volume / "data/blobs/one.bin").write_bytes(b"volume's own one.bin")
    os.symlink("/somewhere/else", tmpfs_volume / "data/blobs/manifest.json")  # a stale pin, repointed

    report = run(cfg, force=True)
    assert os.readlink(tmpfs_volume / "data/blobs/manifest.json") == str(
        cfg.scratch / "data/blobs/manifest.json"
    )
    assert (tmpfs_volume / f"data/blobs/one.bin{CONFLICT_SUFFIX}-1").read_bytes() == b"x"
    assert (tmpfs_volume / "data/blobs/one.bin").read_bytes() == b"volume's own one.bin"
    del expected["one.bin"]
    assert {r: sha(cfg.root / "data/blobs" / r) for r in expected} == expected
    assert report.new_pins == ["data/blobs/manifest.json"]
    assert not run(cfg).changed


# ---------------------------------------------------------------------------------------------------------
# FUSE: no symlinks on the Volume
# ---------------------------------------------------------------------------------------------------------


def test_fuse_without_symlinks_still_provisions(
    fuse_volume: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(tmp_path, fuse_volume, local=("manifest.json",), ignore=(".locks/",))
    with caplog.at_level(logging.WARNING, logger="fractfs"):
        report = run(cfg)
    assert report.capabilities is not None and report.capabilities.symlinks is False
    assert report.pins == []
    assert sorted(report.unpinned) == [
        "data/blobs/.locks/",
        "data/blobs/manifest.json",
        "exports/.locks/",
        "exports/manifest.json",
    ]
    symlink_warnings = [w for w in report.warnings if "symlink" in w]
    assert len(symlink_warnings) == 1
    w = symlink_warnings[0]
    assert str(fuse_volume) in w and all(p in w for p in report.unpinned)
    assert "outside [dirs]" in w
    assert any("symlink" in r.getMessage() for r in caplog.records)

    # the [dirs] redirect is a local symlink: it works, and writes land on the FUSE Volume
    assert (cfg.root / "data/blobs").is_symlink()
    (cfg.root / "data/blobs/manifest.json").write_text("m")
    (cfg.root / "data/blobs/x.parquet").write_bytes(b"p" * 1000)
    assert (fuse_volume / "data/blobs/manifest.json").read_text() == "m"
    assert not (fuse_volume / "data/blobs/manifest.json").is_symlink()
    assert (fuse_volume / "data/blobs/x.parquet").stat().st_size == 1000
    assert not (cfg.scratch / "data").exists()

    again = run(cfg)
    assert not again.changed and len([w for w in again.warnings if "symlink" in w]) == 1


# ---------------------------------------------------------------------------------------------------------
# plan_pins and layout checks (no real volume needed)
# ---------------------------------------------------------------------------------------------------------


def _plan(tmp_path: Path, **kw: Any) -> PinPlan:
    vol = tmp_path / "vol"
    vol.mkdir(exist_ok=True)
    cfg = make_config(tmp_path, vol, **kw)
    return plan_pins(cfg, TierResolver(cfg))


def test_plan_pins_kinds(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path,
        local=("manifest.json", "# comment", "", "!x.json", "index.sqlite  ", "data/blobs/.locks/inner"),
        ignore=(".locks/", "*.tmp", "/data/blobs/cache/"),
    )
    got = {(p.label, p.tier) for p in plan.pins}
    assert got == {
        ("data/blobs/manifest.json", Tier.LOCAL),
        ("exports/manifest.json", Tier.LOCAL),
        ("data/blobs/index.sqlite", Tier.LOCAL),
        ("exports/index.sqlite", Tier.LOCAL),
        ("data/blobs/.locks/", Tier.IGNORE),
        ("exports/.locks/", Tier.IGNORE),  # covers .locks/inner
        ("data/blobs/cache/", Tier.IGNORE),
    }
    assert len(plan.warnings) == 1 and "'*.tmp'" in plan.warnings[0]
    assert json.loads(json.dumps(plan.as_dict()))["pins"]


def test_pins_read_each_line_as_the_resolver_does(symlink_volume: Path, tmp_path: Path) -> None:
    """Lines the pin planner once parsed with its own whitespace and escape rules: an escaped space, an
    escaped trailing space, an escaped '#', a trailing tab (git keeps tabs) and a comment. Each pin must be a
    path the resolver puts in the same tier, and every literal name must be pinned, not warned about."""
    lines = ("sp\\ ace", "trail\\ ", "\\#hash", "tab\t", "# not a rule", "plain  ")
    cfg = make_config(tmp_path, symlink_volume, dirs=("data/blobs",), local=lines)
    resolver = TierResolver(cfg)
    plan = plan_pins(cfg, resolver)
    assert plan.warnings == []  # none of them is a glob
    got = {p.relpath: p.pattern for p in plan.pins}
    assert got == {
        "data/blobs/sp ace": "sp\\ ace",
        "data/blobs/trail ": "trail\\ ",
        "data/blobs/#hash": "\\#hash",
        "data/blobs/tab\t": "tab\t",
        "data/blobs/plain": "plain  ",
    }
    assert all(resolver.resolve(p.relpath) is p.tier is Tier.LOCAL for p in plan.pins)
    # and the pins are real: a write through the [dirs] link lands in node-local scratch
    report = run(cfg)
    assert sorted(report.pins) == sorted(got)
    for rel in got:
        (cfg.root / rel).write_text(rel)
        assert (cfg.scratch / rel).read_text() == rel and (symlink_volume / rel).is_symlink()


def test_plan_pins_ignore_wins_over_local(tmp_path: Path) -> None:
    plan = _plan(tmp_path, local=("state.db",), ignore=("state.db",), dirs=("data/blobs",))
    assert [(p.label, p.tier) for p in plan.pins] == [("data/blobs/state.db", Tier.IGNORE)]


def test_plan_pins_nested_only_where_the_name_exists(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    (vol / "data/blobs/2024/01").mkdir(parents=True)
    (vol / "data/blobs/2023").mkdir(parents=True)
    (vol / "data/blobs/2024/01/manifest.json").write_text("x")
    plan = _plan(tmp_path, local=("manifest.json",), dirs=("data/blobs",))
    assert [p.label for p in plan.pins] == ["data/blobs/2024/01/manifest.json", "data/blobs/manifest.json"]
    # the scan is bounded: with no directory budget only the top level is pinned
    cfg = make_config(tmp_path, vol, local=("manifest.json",), dirs=("data/blobs",))
    assert [p.label for p in plan_pins(cfg, TierResolver(cfg), scan_limit=0).pins] == [
        "data/blobs/manifest.json"
    ]


def test_dirs_entry_matching_ignore_is_not_linked(plain_volume: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, plain_volume, dirs=("data/blobs", "exports"), ignore=("data/",))
    report = run(cfg)
    assert report.linked == ["exports"]
    assert not (cfg.root / "data").exists()
    assert any("'data/blobs'" in w and "precedence" in w for w in report.warnings)


def test_nothing_to_do_without_dirs(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, tmp_path / "vol", dirs=())
    report = run(cfg)
    assert report == ProvisionReport() and isinstance(report.as_dict(), dict)


def test_capabilities_is_json_friendly() -> None:
    caps = Capabilities("/v", True, True, False, True, True, "fuse.rclone", None)
    assert json.loads(json.dumps(caps.as_dict())) == dataclasses.asdict(caps)

"""fractfs.stores.open: the backend choice and the unmounted-Volume check shared by init() and the CLI."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from operator_support import make_app

import fractfs
import fractfs.stores as stores
from fractfs.config import load_config
from fractfs.errors import ConfigError, ProvisionError, StoreError, VolumeNotMounted
from fractfs.stores import FsspecStore, PosixStore
from fractfs.stores.open import check_volume_mounted, open_location, open_store


def test_missing_volume_is_refused_with_one_error_both_sides_catch(tmp_path: Path) -> None:
    cfg = make_app(tmp_path, volume=False)
    with pytest.raises(VolumeNotMounted) as err:
        check_volume_mounted(cfg)
    msg = str(err.value)
    assert str(tmp_path / "volume") in msg and "fractfs_VOLUME_ROOT" in msg and "not mounted" in msg
    # init() raised ProvisionError for this, the CLI StoreError: except clauses of both kinds still catch it
    assert isinstance(err.value, ProvisionError) and isinstance(err.value, StoreError)
    with pytest.raises(VolumeNotMounted):
        open_store(cfg)
    assert not (tmp_path / "volume").exists()  # never created, so it cannot silently become local disk


def test_init_refuses_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_app(tmp_path, volume=False)
    monkeypatch.setenv("fractfs_VOLUME_ROOT", str(tmp_path / "volume"))
    monkeypatch.setenv("fractfs_SCRATCH", str(tmp_path / "scratch"))
    with pytest.raises(VolumeNotMounted, match="does not exist or is not mounted"):
        fractfs.init(cfg.root, start_daemon=False)
    fractfs.shutdown(final_sync=False)
    assert not (tmp_path / "volume").exists() and not (cfg.root / "data").exists()


def test_mounted_volume_opens_the_checkpoint_area(tmp_path: Path) -> None:
    cfg = make_app(tmp_path)
    check_volume_mounted(cfg)
    store = open_store(cfg)
    assert isinstance(store, PosixStore)
    assert cfg.checkpoint_location is not None and store.url.rstrip("/").endswith(
        Path(cfg.checkpoint_location).name)


def test_passthrough_has_no_store(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    cfg = load_config(root, env={})
    assert cfg.passthrough
    check_volume_mounted(cfg)  # nothing to check
    with pytest.raises(ConfigError, match=r"passthrough.*volume_root in .*\.fractfs\.toml"):
        open_store(cfg)


def test_url_volume_is_not_checked_on_disk(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    cfg = load_config(root, env={"fractfs_VOLUME_ROOT": "memory://fractfs-open-test"})
    check_volume_mounted(cfg)
    assert isinstance(open_store(cfg), FsspecStore)


def test_the_package_level_opener_is_looked_up_at_call_time(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection and the torture benchmark wrap every store the app opens by replacing
    fractfs.stores.open_store; open_store(config) must go through whatever is there."""
    cfg = make_app(tmp_path)
    seen: list[tuple[str, Any, bool]] = []

    def wrapped(location: str, *, backend: str | None = None, fast_path: bool = True) -> Any:
        seen.append((location, backend, fast_path))
        return open_location(location, backend=backend, fast_path=fast_path)

    monkeypatch.setattr(stores, "open_store", wrapped)
    open_store(cfg)
    assert seen == [(cfg.checkpoint_location, cfg.backend, cfg.s3_fast_path)]


def test_missing_backend_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_app(tmp_path)

    def no_sdk(location: str, **_kw: Any) -> Any:
        raise ImportError("No module named 's3fs'", name="s3fs")

    monkeypatch.setattr(stores, "open_store", no_sdk)
    with pytest.raises(StoreError, match=r"needs s3fs: pip install 'fractfs\[s3\]'"):
        open_store(cfg)


def test_location_dispatch(tmp_path: Path) -> None:
    assert stores.open_store is open_location  # the package name is the same function
    assert isinstance(open_location(str(tmp_path / "x")), PosixStore)
    assert isinstance(open_location("memory://fractfs-dispatch-2"), FsspecStore)
    with pytest.raises(ValueError, match="empty location"):
        open_location("")

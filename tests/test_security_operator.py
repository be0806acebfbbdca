"""Issue 16, points 1, 5, 6 and 7 where they meet the app and the operator: scratch another user controls,
the CLI stepping around the lease or through a link, credentials in URLs, a checkpoint area that is a link."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_cli import App, one_error_line

import fractfs
from fractfs.config import load_config
from fractfs.errors import ConfigError, ProvisionError
from fractfs.lease import Lease
from fractfs.stores.posix import PosixStore

OTHER = 54321
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"


@pytest.fixture
def app(tmp_path: Path) -> App:
    volume = tmp_path / "volume"
    volume.mkdir()
    a = App(tmp_path, volume)
    assert sorted(a.first_run()) == ["data/blobs/manifest.json", "state/counter.txt"]
    return a


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true", reason="chown to another uid needs root")
def test_init_refuses_a_scratch_another_user_created_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    scratch = shared / "fractfs"
    scratch.mkdir()
    os.chmod(scratch, 0o777)
    planted = scratch / "state" / "counter.txt"  # content a restore would keep and the next checkpoint save
    planted.parent.mkdir()
    planted.write_text("planted")
    os.chown(scratch, OTHER, OTHER)
    (tmp_path / "app").mkdir()
    (tmp_path / "volume").mkdir()
    monkeypatch.setenv("fractfs_VOLUME_ROOT", str(tmp_path / "volume"))
    monkeypatch.setenv("fractfs_SCRATCH", str(scratch))
    with pytest.raises(ProvisionError) as err:
        fractfs.init(tmp_path / "app", start_daemon=False)
    assert "fractfs_SCRATCH" in str(err.value) and f"uid {OTHER}" in str(err.value)
    assert sorted(p.name for p in scratch.iterdir()) == ["state"]  # nothing of ours went in
    assert not (tmp_path / "volume" / "_checkpoint").exists()


def test_restore_to_a_symlink_is_refused_naming_where_it_leads(app: App) -> None:
    target = app.base / "somewhere-else"
    target.mkdir()
    link = app.base / "restore-here"
    link.symlink_to(target)
    line = one_error_line(app.cli("restore", "--to", str(link), expect=2))
    assert f"--to {link} is a symbolic link to {target}" in line
    assert list(target.iterdir()) == []
    app.cli("restore", "--to", str(target))  # the real directory, named as such, is fine
    assert (target / "state" / "counter.txt").read_text() == "1"


def test_restore_into_the_app_refuses_while_another_node_holds_the_lease(app: App) -> None:
    (app.root / "state" / "counter.txt").unlink()  # a restore without --overwrite would write it back
    other = Lease(PosixStore(Path(app.volume) / "_checkpoint"), "other-node:7", timeout=60)
    assert other.tick()
    line = one_error_line(app.cli("restore", expect=1))
    assert "other-node:7 holds the single-writer lease" in line and "--force" in line
    assert not (app.root / "state" / "counter.txt").exists()
    app.cli("restore", "--dry-run")  # looking is always allowed
    app.cli("restore", "--force")
    assert (app.root / "state" / "counter.txt").read_text() == "1"
    other.release()


def test_prune_takes_and_releases_the_lease(app: App) -> None:
    (app.root / "state" / "counter.txt").write_text("2")
    app.cli("sync")
    app.cli("prune", "--keep", "1")
    st = app.cli_json("status")
    # sync and prune each held the lease for their run and released it: nothing blocks the next writer
    assert st["lease"] is None or st["lease"]["state"] == "free", st["lease"]


def test_credentials_in_a_volume_url_are_refused_without_echoing_them(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    env = {"fractfs_VOLUME_ROOT": f"s3://AKIAEXAMPLE:{SECRET}@bucket/app"}
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "app", env=env)
    msg = str(err.value)
    assert "fractfs_VOLUME_ROOT" in msg and "AWS_ACCESS_KEY_ID" in msg and "s3://***@bucket/app" in msg
    assert SECRET not in msg and "AKIAEXAMPLE" not in msg


def test_credentials_in_the_endpoint_url_never_reach_the_output(tmp_path: Path) -> None:
    a = App(tmp_path, "s3://bucket/app", AWS_ENDPOINT_URL=f"http://endpoint-user:{SECRET}@127.0.0.1:9",
            AWS_MAX_ATTEMPTS="1", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    (a.root / ".fractfs.toml").write_text("")
    seen = []
    for args in (["status"], ["status", "--json"], ["doctor"], ["snapshots"], ["sync"], ["verify"]):
        proc = a.cli(*args, expect=proc_any())
        seen.append(proc.stdout + proc.stderr)
    text = "\n".join(seen)
    assert SECRET not in text and "endpoint-user" not in text, text
    assert "http://***@127.0.0.1:9" in text  # the endpoint is still named, without its credentials


class proc_any(int):
    """An expected exit code that matches any code (the store is unreachable on purpose)."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = int.__hash__


def test_a_checkpoint_subdir_that_is_a_link_out_of_the_volume_or_into_the_app_is_refused(tmp_path: Path) -> None:
    root, volume, elsewhere = tmp_path / "app", tmp_path / "volume", tmp_path / "elsewhere"
    for d in (root, volume, elsewhere):
        d.mkdir()
    env = {"fractfs_VOLUME_ROOT": str(volume), "fractfs_SCRATCH": str(tmp_path / "scratch")}
    (volume / "_checkpoint").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="checkpoint_subdir.*outside the Volume"):
        load_config(root, env=env)
    (volume / "_checkpoint").unlink()
    (volume / "_checkpoint").symlink_to(root / "state")
    with pytest.raises(ConfigError, match="checkpoint_subdir.*outside the Volume"):
        load_config(root, env=env)
    (volume / "_checkpoint").unlink()
    (volume / "inside").mkdir()
    (volume / "_checkpoint").symlink_to(volume / "inside")  # a link that stays on the Volume is fine
    assert load_config(root, env=env).checkpoint_location == str(volume) + "/_checkpoint"

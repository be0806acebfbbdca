"""Config loading: every knob, both env prefixes, aliases, and errors that name file and key."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from fractfs.config import load_config
from fractfs.errors import ConfigError


def write(root: Path, text: str) -> Path:
    p = root / ".fractfs.toml"
    p.write_text(text)
    return p


@pytest.fixture()
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    return root


def test_defaults_passthrough(app: Path) -> None:
    cfg = load_config(app, env={})
    assert cfg.passthrough and cfg.volume_root is None
    assert cfg.config_file is None
    assert cfg.sync_interval == 300.0 and cfg.checkpoint_subdir == "_checkpoint"
    assert (
        cfg.scratch == Path("/tmp/fractfs") and cfg.content_hash is False and cfg.auto_ignore_bundle is True
    )


def test_every_toml_knob(app: Path, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    write(
        app,
        f"""
backend = "volumes"
volume_root = "{vol}"
sync_interval = 12
scratch = "{tmp_path / "scr"}"
checkpoint_subdir = "_ckpt"
content_hash = true
auto_ignore_bundle = false
keep_snapshots = 3
transfers = 8
sync_mode = "watch"
grace = 5.5
[dirs]
paths = ["data/blobs", "./exports/"]
[local]
patterns = ["manifest.json", "*.meta.json"]
[ignore]
patterns = ["*.tmp", ".locks/"]
""",
    )
    cfg = load_config(app, env={})
    assert cfg.backend == "volumes" and cfg.volume_root == str(vol) and cfg.dirs_root == vol
    assert cfg.sync_interval == 12.0 and cfg.scratch == tmp_path / "scr" and cfg.checkpoint_subdir == "_ckpt"
    assert cfg.content_hash and not cfg.auto_ignore_bundle and cfg.keep_snapshots == 3 and cfg.transfers == 8
    assert cfg.sync_mode == "watch" and cfg.grace == 5.5
    assert cfg.dirs == ("data/blobs", "exports")
    assert cfg.local_patterns == ("manifest.json", "*.meta.json")
    assert cfg.ignore_patterns == ("*.tmp", ".locks/")
    assert cfg.checkpoint_location == f"{vol}/_ckpt"
    assert cfg.warnings == ()


@pytest.mark.parametrize("prefix", ["fractfs_", "FRACTFS_"])
def test_env_overrides_toml(app: Path, tmp_path: Path, prefix: str) -> None:
    write(app, f'volume_root = "{tmp_path / "a"}"\nsync_interval = 10\ncontent_hash = false\n')
    env = {
        prefix + "VOLUME_ROOT": str(tmp_path / "b"),
        prefix + "SYNC_INTERVAL": "2.5",
        prefix + "CONTENT_HASH": "true",
        prefix + "AUTO_IGNORE_BUNDLE": "no",
        prefix + "SCRATCH": str(tmp_path / "s"),
        prefix + "CHECKPOINT_SUBDIR": "ck",
        prefix + "BACKEND": "local",
    }
    cfg = load_config(app, env=env)
    assert cfg.volume_root == str(tmp_path / "b") and cfg.sync_interval == 2.5 and cfg.content_hash
    assert not cfg.auto_ignore_bundle and cfg.scratch == tmp_path / "s" and cfg.checkpoint_subdir == "ck"
    assert cfg.backend == "local"
    assert cfg.sources["sync_interval"] == f"env {prefix}SYNC_INTERVAL"


def test_root_from_env(app: Path, tmp_path: Path) -> None:
    write(app, "sync_interval = 7\n")
    cfg = load_config(None, env={"fractfs_ROOT": str(app)})
    assert cfg.root == app and cfg.sync_interval == 7.0


def test_root_found_upwards(app: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(app, "sync_interval = 9\n")
    (app / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(app / "sub" / "deeper")
    assert load_config(None, env={}).root == app


def test_upstream_spellings(app: Path, tmp_path: Path) -> None:
    cfg = load_config(app, env={"FRACTFS_REMOTE_ROOT": str(tmp_path / "v"), "FRACTFS_BACKEND": "mount"})
    assert cfg.backend == "volumes" and cfg.volume_root == str(tmp_path / "v")
    write(app, 'backend = "fsspec"\nremote_root = "s3://bucket/app"\n')
    cfg = load_config(app, env={})
    assert cfg.backend == "s3" and cfg.volume_root == "s3://bucket/app"
    assert cfg.checkpoint_location == "s3://bucket/app/_checkpoint"


def test_backend_inferred(app: Path) -> None:
    assert load_config(app, env={"fractfs_VOLUME_ROOT": "s3://b/p"}).backend == "s3"
    assert load_config(app, env={"fractfs_VOLUME_ROOT": "/Volumes/c/s/v"}).backend == "volumes"


def test_prefixes_disagree(app: Path) -> None:
    with pytest.raises(ConfigError, match="fractfs_SYNC_INTERVAL.*FRACTFS_SYNC_INTERVAL|disagree"):
        load_config(app, env={"fractfs_SYNC_INTERVAL": "1", "FRACTFS_SYNC_INTERVAL": "2"})


BAD_TOML = [
    ('[dirs\npaths = ["a"]\n', r"\.fractfs\.toml: invalid TOML.*line 1"),
    ('[dirs]\npaths = "data"\n', r"\[dirs\]\.paths must be a list"),
    ("[dirs]\npaths = [1]\n", r"\[dirs\]\.paths\[0\] = 1 must be a string"),
    ('[local]\npatterns = "x"\n', r"\[local\]\.patterns must be a list"),
    ('[ignore]\npatterns = [""]\n', r"\[ignore\]\.patterns\[0\] is empty"),
    ('dirs = ["a"]\n', r"\[dirs\] must be a table"),
    ('backend = "ftp"\nvolume_root = "/v"\n', r"backend = 'ftp' is not a backend"),
    ('sync_interval = "soon"\n', r"sync_interval = 'soon': expected a number"),
    ("sync_interval = -1\n", r"sync_interval = -1: must be a positive"),
    ("sync_interval = true\n", r"sync_interval = True: expected a number"),
    ('content_hash = "maybe"\n', r"content_hash = 'maybe': expected true or false"),
    ("keep_snapshots = 0\n", r"keep_snapshots = 0: keep at least 1"),
    ("transfers = 1000\n", r"transfers = 1000: must be between"),
    ('sync_mode = "sometimes"\n', r"sync_mode = 'sometimes'"),
    ("scratch = 5\n", r"scratch = 5: expected a string"),
    ('checkpoint_subdir = "../up"\n', r"checkpoint_subdir = '../up'"),
    ('[dirs]\npaths = ["/abs/data"]\n', r"\[dirs\]\.paths\[0\] = '/abs/data' is absolute"),
    ('[dirs]\npaths = ["../outside"]\n', r"\[dirs\]\.paths\[0\] = '../outside' escapes the app root"),
    ('[dirs]\npaths = ["a/../../x"]\n', r"\[dirs\]\.paths\[0\] = 'a/../../x' escapes"),
    ('[dirs]\npaths = ["."]\n', r"\[dirs\]\.paths\[0\] = '.' is the app root itself"),
    ('[dirs]\npaths = [""]\n', r"\[dirs\]\.paths\[0\] is empty"),
    (
        '[dirs]\npaths = ["data", "data/blobs"]\n',
        r"\[dirs\]\.paths\[1\] = 'data/blobs' overlaps \[dirs\]\.paths\[0\]",
    ),
    ('[dirs]\npaths = ["x", "x/"]\n', r"overlaps"),
    ('[dirs]\npaths = ["_checkpoint/x"]\n', r"collides with the checkpoint area"),
    ('[dirs]\npaths = ["' + "a" * 300 + '"]\n', r"longer than 255 bytes"),
    ('volume_root = "s3://b/x"\nbackend = "volumes"\n', r"is a URL but backend is 'volumes'"),
    ('backend = "s3"\nvolume_root = "/mnt/x"\n', r"backend 's3' needs a URL"),
    ('volume_root = "/v"\nremote_root = "/w"\n', r"both 'volume_root' and 'remote_root'"),
]


@pytest.mark.parametrize("text,pattern", BAD_TOML)
def test_bad_toml_names_file_and_key(app: Path, text: str, pattern: str) -> None:
    p = write(app, text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(app, env={})
    assert str(p) in str(info.value) or "environment" in str(info.value)


def test_invalid_utf8(app: Path) -> None:
    (app / ".fractfs.toml").write_bytes(b"sync_interval = 3\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(app, env={})


def test_byte_order_mark_is_read(app: Path) -> None:
    # Windows editors save UTF-8 with a BOM; tomllib alone calls it "Invalid statement (at line 1, column 1)"
    (app / ".fractfs.toml").write_bytes(b"\xef\xbb\xbfsync_interval = 3\n[dirs]\npaths = [\"d\xc3\xa9j\xc3\xa0\"]\n")
    cfg = load_config(app, env={})
    assert cfg.sync_interval == 3.0 and cfg.dirs == ("d\u00e9j\u00e0",) and cfg.warnings == ()
    # a bad byte after the mark is still reported at its offset in the file
    (app / ".fractfs.toml").write_bytes(b"\xef\xbb\xbfsync_interval = 3\n# \xff\n")
    with pytest.raises(ConfigError, match="not valid UTF-8 at byte 23"):
        load_config(app, env={})


@pytest.mark.parametrize("source", ["toml", "fractfs_", "FRACTFS_"])
def test_sync_interval_zero_means_no_background_checkpoints(app: Path, source: str) -> None:
    # fractfs 0.1.0 read 0 as "no periodic checkpoint"; its deployments must keep starting
    write(app, "sync_interval = 0\n" if source == "toml" else "sync_interval = 60\n")
    env = {} if source == "toml" else {source + "SYNC_INTERVAL": "0"}
    cfg = load_config(app, env=env)
    assert cfg.sync_interval == 0.0 and cfg.summary()["sync_interval"] == 0.0
    with pytest.raises(ConfigError, match=r"SYNC_INTERVAL = -0\.5: must be a positive number of seconds, or 0"):
        load_config(app, env={"fractfs_SYNC_INTERVAL": "-0.5"})


BAD_ENV = [
    ({"fractfs_SYNC_INTERVAL": "abc"}, r"environment variable fractfs_SYNC_INTERVAL = 'abc'"),
    ({"FRACTFS_CONTENT_HASH": "2"}, r"FRACTFS_CONTENT_HASH = '2': expected true or false"),
    ({"fractfs_BACKEND": "gcs"}, r"env fractfs_BACKEND = 'gcs' is not a backend"),
    ({"fractfs_ROOT": ""}, r"fractfs_ROOT is empty"),
    ({"fractfs_KEEP_SNAPSHOTS": "1.5"}, r"fractfs_KEEP_SNAPSHOTS = '1.5': expected a whole number"),
    ({"fractfs_SCRATCH": ""}, r"fractfs_SCRATCH is empty"),
]


@pytest.mark.parametrize("env,pattern", BAD_ENV)
def test_bad_env(app: Path, env: dict[str, str], pattern: str) -> None:
    root = None if "fractfs_ROOT" in env else app
    with pytest.raises(ConfigError, match=pattern):
        load_config(root, env=env)


def test_location_conflicts(app: Path, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    with pytest.raises(ConfigError, match="inside the app root"):
        load_config(app, env={"fractfs_VOLUME_ROOT": str(app / "vol")})
    with pytest.raises(ConfigError, match="contains the app root"):
        load_config(app, env={"fractfs_VOLUME_ROOT": str(tmp_path)})
    with pytest.raises(ConfigError, match="(?i)scratch.*inside the Volume"):
        load_config(app, env={"fractfs_VOLUME_ROOT": str(vol), "fractfs_SCRATCH": str(vol / "s")})
    write(app, '[dirs]\npaths = ["data"]\n')
    with pytest.raises(ConfigError, match=r"(?i)scratch.*inside the \[dirs\] directory 'data'"):
        load_config(app, env={"fractfs_VOLUME_ROOT": str(vol), "fractfs_SCRATCH": str(app / "data" / "s")})


def test_s3_dirs_need_posix_mount(app: Path, tmp_path: Path) -> None:
    write(app, '[dirs]\npaths = ["data"]\n')
    with pytest.raises(ConfigError, match="dirs_root"):
        load_config(app, env={"fractfs_VOLUME_ROOT": "s3://b/app"})
    cfg = load_config(
        app, env={"fractfs_VOLUME_ROOT": "s3://b/app", "fractfs_DIRS_ROOT": str(tmp_path / "m")}
    )
    assert cfg.dirs_root == tmp_path / "m"


def test_unknown_keys_warn(app: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(app, '[dir]\npaths = ["x"]\n[local]\npattern = ["y"]\nsync_intervall = 3\n')
    cfg = load_config(app, env={"fractfs_SYNC_INTERVALL": "3", "HOME": "/root"})
    text = "\n".join(cfg.warnings)
    assert "unknown key 'dir'" in text and "did you mean 'dirs'" in text
    assert "[local].pattern" in text and "'patterns'" in text
    assert "sync_intervall" in text and "fractfs_SYNC_INTERVALL" in text
    assert any("unknown key 'dir'" in r.message for r in caplog.records)


def test_unicode_paths_ok(app: Path, tmp_path: Path) -> None:
    write(app, '[dirs]\npaths = ["données/blobs", "日本"]\n')
    cfg = load_config(app, env={"fractfs_VOLUME_ROOT": str(tmp_path / "v")})
    assert cfg.dirs == ("données/blobs", "日本")


def test_config_is_frozen(app: Path) -> None:
    cfg = load_config(app, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sync_interval = 1  # type: ignore[misc]
    assert os.fspath(cfg.root) == str(app)


# -- the S3 fast-path switch: a setting like the others, read nowhere else --------------------------------
@pytest.mark.parametrize("prefix", ["fractfs_", "FRACTFS_"])
def test_s3_fast_path_from_env_and_toml(app: Path, prefix: str) -> None:
    cfg = load_config(app, env={})
    assert cfg.s3_fast_path is True and cfg.warnings == ()
    cfg = load_config(app, env={prefix + "S3_FAST_PATH": "off"})
    assert cfg.s3_fast_path is False and cfg.sources["s3_fast_path"] == f"env {prefix}S3_FAST_PATH"
    assert cfg.warnings == ()  # a known variable: no "not a fractfs setting" warning
    write(app, "s3_fast_path = false\n")
    assert load_config(app, env={}).s3_fast_path is False
    assert load_config(app, env={prefix + "S3_FAST_PATH": "1"}).s3_fast_path is True  # the environment wins


@pytest.mark.parametrize(
    "env,source,pattern",
    [
        ({"FRACTFS_S3_FAST_PATH": "maybe"}, None,
         r"environment variable FRACTFS_S3_FAST_PATH = 'maybe': expected true or false"),
        ({"fractfs_S3_FAST_PATH": ""}, None, r"environment variable fractfs_S3_FAST_PATH = '': expected true"),
        ({"fractfs_S3_FAST_PATH": "0", "FRACTFS_S3_FAST_PATH": "1"}, None, r"disagree"),
        ({}, 's3_fast_path = "fast"\n', r"\.fractfs\.toml: s3_fast_path = 'fast': expected true or false"),
    ],
)
def test_s3_fast_path_bad_values_name_the_variable(app: Path, env: dict[str, str], source: str | None,
                                                   pattern: str) -> None:
    if source is not None:
        write(app, source)
    with pytest.raises(ConfigError, match=pattern):
        load_config(app, env=env)


def _botocore_puts(store: object) -> list[str]:
    """Record the PutObject requests that go through botocore (the slow path) from now on."""
    seen: list[str] = []
    client = store.fs.s3  # type: ignore[attr-defined]  # s3fs's botocore client, created by the first call
    client.meta.events.register("before-send.s3.PutObject", lambda request, **_: seen.append(request.url))
    return seen


@pytest.mark.parametrize("value,via_botocore", [("1", 0), ("0", 1)])
def test_s3_fast_path_setting_reaches_the_store(app: Path, s3_url: str, monkeypatch: pytest.MonkeyPatch,
                                                value: str, via_botocore: int) -> None:
    from fractfs.stores import open_store

    cfg = load_config(app, env={"fractfs_VOLUME_ROOT": s3_url, "FRACTFS_S3_FAST_PATH": value})
    # the store no longer reads the variable itself: the opposite value in the process environment is ignored
    monkeypatch.setenv("FRACTFS_S3_FAST_PATH", "0" if value == "1" else "1")
    store = open_store(cfg.checkpoint_location or "", backend=cfg.backend, fast_path=cfg.s3_fast_path)
    store.put("first", b"1")
    seen = _botocore_puts(store)
    store.put("second", b"2")
    assert len(seen) == via_botocore and store.get("second") == b"2"


# -- what provisioning trusts the config to have refused (provision/ no longer checks these itself) -------
def _symlink_on_the_way(app: Path, tmp: Path) -> None:
    (tmp / "elsewhere").mkdir()
    os.symlink(tmp / "elsewhere", app / "link")


TRUSTED = [
    # (id, [dirs] paths, env given (app, tmp), setup, message)
    ("scratch-inside-local-dirs", ["data"],
     lambda a, t: {"fractfs_VOLUME_ROOT": str(t / "vol"), "fractfs_SCRATCH": str(a / "data" / "s")}, None,
     r"fractfs_SCRATCH = .* is inside the \[dirs\] directory 'data'"),
    ("scratch-inside-volume-dirs", ["data"],
     lambda a, t: {"fractfs_VOLUME_ROOT": str(t / "vol"), "fractfs_SCRATCH": str(t / "vol" / "data" / "s")},
     None, r"fractfs_SCRATCH = .* is inside the Volume"),
    ("volume-inside-app-root", ["data"], lambda a, t: {"fractfs_VOLUME_ROOT": str(a / "vol")}, None,
     r"fractfs_VOLUME_ROOT = .* is inside the app root"),
    ("dirs-root-inside-app-root", ["data"],
     lambda a, t: {"fractfs_VOLUME_ROOT": "s3://b/app", "fractfs_DIRS_ROOT": str(a / "mnt")}, None,
     r"fractfs_DIRS_ROOT = .* is inside the app root"),
    ("app-root-inside-its-own-volume-dir", ["app"],
     lambda a, t: {"fractfs_VOLUME_ROOT": "s3://b/app", "fractfs_DIRS_ROOT": str(a.parent)}, None,
     r"fractfs_DIRS_ROOT = .* puts the \[dirs\] directory 'app' at .*, which contains its own link"),
    ("dirs-on-the-checkpoint-area", ["_checkpoint"], lambda a, t: {"fractfs_VOLUME_ROOT": str(t / "vol")},
     None, r"collides with the checkpoint area"),
    ("dirs-through-a-symlink", ["link/x"], lambda a, t: {"fractfs_VOLUME_ROOT": str(t / "vol")},
     _symlink_on_the_way, r"goes through .*link, which is a symlink"),
    ("dirs-without-posix-volume", ["data"], lambda a, t: {"fractfs_VOLUME_ROOT": "s3://b/app"}, None,
     r"\[dirs\]\.paths needs a POSIX path for the Volume.*dirs_root"),
]


@pytest.mark.parametrize("case", TRUSTED, ids=[c[0] for c in TRUSTED])
def test_layouts_provisioning_trusts_the_config_to_refuse(tmp_path: Path, case: tuple[Any, ...]) -> None:
    """provision() once re-checked each of these itself; now load_config is the one place that refuses them
    (and provisioning never sees such a Config)."""
    _id, dirs, env, setup, pattern = case
    app = tmp_path / "apps" / "app"
    app.mkdir(parents=True)
    write(app, "[dirs]\npaths = [" + ", ".join(f'"{d}"' for d in dirs) + "]\n")
    if setup is not None:
        setup(app, tmp_path)
    with pytest.raises(ConfigError, match=pattern):
        load_config(app, env=env(app, tmp_path))


def test_app_root_on_the_dirs_mount_is_accepted_when_nothing_overlaps(tmp_path: Path) -> None:
    # the overlap refusal above is exact: an app root elsewhere on the same mount keeps working as before
    app = tmp_path / "mnt" / "app"
    app.mkdir(parents=True)
    write(app, '[dirs]\npaths = ["data"]\n')
    cfg = load_config(app, env={"fractfs_VOLUME_ROOT": "s3://b/app", "fractfs_DIRS_ROOT": str(tmp_path / "mnt")})
    assert cfg.dirs == ("data",) and cfg.dirs_root == tmp_path / "mnt"


def test_a_provisioned_dirs_link_is_not_an_overlap(app: Path, tmp_path: Path) -> None:
    # after init() root/data is the link to VOL/data: following it must not read as "root inside the Volume"
    vol = tmp_path / "vol"
    (vol / "data").mkdir(parents=True)
    os.symlink(vol / "data", app / "data")
    write(app, '[dirs]\npaths = ["data"]\n')
    assert load_config(app, env={"fractfs_VOLUME_ROOT": str(vol)}).dirs == ("data",)

"""A corpus of malformed and hostile configurations, each through ``fractfs.init()``.

Every case must be refused with a ``ConfigError`` whose message names the file (or environment variable)
and the key, before anything on disk changes: the app root, the Volume and everything around them are
byte-identical afterwards, no scratch directory exists and no symlink was made. tests/test_config.py covers
``load_config`` with the common mistakes; this corpus adds the hostile and odd ones (types, escapes,
overlaps, empty strings, Unicode, very long paths, huge numbers, symlinks that lead out of the root) and
checks them end to end.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import pytest
from test_reliability_support import snapshot_tree

import fractfs
from fractfs.errors import ConfigError

TOML = "TOML"  # the message must name the .fractfs.toml file itself

LONG = "x" * 300
DEEP = "/".join(["d" * 200] * 25)


def _link_out(root: Path, tmp: Path) -> None:
    (tmp / "outside").mkdir(exist_ok=True)
    os.symlink(tmp / "outside", root / "link")


def _link_in(root: Path, tmp: Path) -> None:
    (root / "real").mkdir()
    os.symlink("real", root / "alias")


# (id, .fractfs.toml text or None, environment, regex the message must match, what it must name, setup)
Case = tuple[str, Optional[str], dict[str, str], str, str, Optional[Callable[[Path, Path], None]]]
CASES: list[Case] = [
    # -- TOML syntax and structure
    ("toml-syntax", "[dirs\npaths = []\n", {}, r"invalid TOML.*line 1", TOML, None),
    ("toml-duplicate-key", "sync_interval = 1\nsync_interval = 2\n", {}, r"invalid TOML.*line 2", TOML, None),
    ("toml-duplicate-table", "[dirs]\npaths = []\n[dirs]\npaths = []\n", {}, r"invalid TOML", TOML, None),
    ("toml-not-utf8", None, {}, r"not valid UTF-8", TOML, None),
    ("dirs-not-a-table", 'dirs = ["a"]\n', {}, r"\[dirs\] must be a table", TOML, None),
    ("dirs-paths-string", '[dirs]\npaths = "data"\n', {}, r"\[dirs\]\.paths must be a list", TOML, None),
    ("dirs-paths-nested", '[dirs]\npaths = [["a"]]\n', {}, r"\[dirs\]\.paths\[0\].*must be a string", TOML,
     None),
    ("dirs-paths-table", "[dirs]\npaths = {a = 1}\n", {}, r"\[dirs\]\.paths must be a list", TOML, None),
    ("local-pattern-int", '[local]\npatterns = ["a", 3]\n', {}, r"\[local\]\.patterns\[1\] = 3", TOML, None),
    # -- types and numbers
    ("interval-string", 'sync_interval = "10s"\n', {}, r"sync_interval = '10s'", TOML, None),
    ("interval-bool", "sync_interval = true\n", {}, r"sync_interval = True", TOML, None),
    ("interval-nan", "sync_interval = nan\n", {}, r"sync_interval = nan: expected a finite", TOML, None),
    ("interval-inf", "sync_interval = inf\n", {}, r"sync_interval = inf: expected a finite", TOML, None),
    ("interval-negative", "sync_interval = -1\n", {}, r"sync_interval = -1: must be a positive", TOML, None),
    # 0 is accepted (no background checkpoints, as in 0.1.0): the refusal starts just below it
    ("interval-just-below-zero", "sync_interval = -0.001\n", {}, r"sync_interval = -0.001: must be a positive",
     TOML, None),
    ("interval-huge", "sync_interval = 1e300\n", {}, r"sync_interval = 1e\+300: at most", TOML, None),
    ("grace-huge", "grace = 99999999999\n", {}, r"grace = 99999999999: at most", TOML, None),
    ("grace-neg-inf", "grace = -inf\n", {}, r"grace = -inf: expected a finite", TOML, None),
    ("keep-float", "keep_snapshots = 2.5\n", {}, r"keep_snapshots = 2\.5: expected a whole", TOML, None),
    ("keep-overflow-float", "keep_snapshots = 1e400\n", {}, r"keep_snapshots = inf", TOML, None),
    ("keep-zero", "keep_snapshots = 0\n", {}, r"keep_snapshots = 0: keep at least 1", TOML, None),
    ("transfers-huge", "transfers = 99999999999999999999\n", {}, r"transfers = 99999999999999999999", TOML,
     None),
    ("transfers-negative", "transfers = -1\n", {}, r"transfers = -1", TOML, None),
    ("content-hash-int", "content_hash = 1\n", {}, r"content_hash = 1: expected true or false", TOML, None),
    ("lease-timeout-zero", "lease_timeout = 0\n", {}, r"lease_timeout = 0", TOML, None),
    ("backend-unknown", 'backend = "ftp"\nvolume_root = "/v"\n', {}, r"backend = 'ftp' is not a backend",
     TOML, None),
    ("sync-mode", 'sync_mode = "always"\n', {}, r"sync_mode = 'always'", TOML, None),
    ("both-spellings", 'volume_root = "/a"\nremote_root = "/b"\n', {}, r"both 'volume_root' and 'remote_root'",
     TOML, None),
    # -- [dirs] paths: escapes, overlaps, odd characters, length, symlinks
    ("dirs-dotdot", '[dirs]\npaths = ["../up"]\n', {}, r"\[dirs\]\.paths\[0\] = '\.\./up' escapes", TOML,
     None),
    ("dirs-dotdot-inner", '[dirs]\npaths = ["a/../../up"]\n', {}, r"\[dirs\]\.paths\[0\].*escapes", TOML,
     None),
    ("dirs-absolute", '[dirs]\npaths = ["/etc"]\n', {}, r"\[dirs\]\.paths\[0\] = '/etc' is absolute", TOML,
     None),
    ("dirs-home", '[dirs]\npaths = ["~/x"]\n', {}, r"\[dirs\]\.paths\[0\].*absolute", TOML, None),
    ("dirs-drive", '[dirs]\npaths = ["C:/x"]\n', {}, r"\[dirs\]\.paths\[0\].*absolute", TOML, None),
    ("dirs-root-itself", '[dirs]\npaths = ["./"]\n', {}, r"\[dirs\]\.paths\[0\].*app root itself", TOML, None),
    ("dirs-empty", '[dirs]\npaths = [""]\n', {}, r"\[dirs\]\.paths\[0\] is empty", TOML, None),
    ("dirs-blank", '[dirs]\npaths = ["   "]\n', {}, r"\[dirs\]\.paths\[0\] is empty", TOML, None),
    ("dirs-nul", '[dirs]\npaths = ["a\\u0000b"]\n', {}, r"\[dirs\]\.paths\[0\].*NUL", TOML, None),
    ("dirs-newline", '[dirs]\npaths = ["data\\n"]\n', {}, r"\[dirs\]\.paths\[0\].*control character", TOML,
     None),
    ("dirs-tab", '[dirs]\npaths = ["da\\tta"]\n', {}, r"\[dirs\]\.paths\[0\].*control character", TOML, None),
    ("dirs-backslash", '[dirs]\npaths = ["data\\\\blobs"]\n', {}, r"\[dirs\]\.paths\[0\].*backslash", TOML,
     None),
    ("dirs-leading-space", '[dirs]\npaths = [" data"]\n', {}, r"\[dirs\]\.paths\[0\].*whitespace", TOML, None),
    ("dirs-trailing-space", '[dirs]\npaths = ["data /x"]\n', {}, r"\[dirs\]\.paths\[0\].*whitespace", TOML,
     None),
    ("dirs-duplicate", '[dirs]\npaths = ["data", "data"]\n', {}, r"\[dirs\]\.paths\[1\].*overlaps", TOML, None),
    ("dirs-nested", '[dirs]\npaths = ["data", "data/blobs"]\n', {}, r"\[dirs\]\.paths\[1\].*overlaps", TOML,
     None),
    ("dirs-nested-dotted", '[dirs]\npaths = ["data/x", "./data"]\n', {}, r"\[dirs\]\.paths\[1\].*overlaps",
     TOML, None),
    ("dirs-unicode-forms", '[dirs]\npaths = ["caf\\u00e9", "cafe\\u0301"]\n', {},
     r"\[dirs\]\.paths\[1\].*different Unicode forms", TOML, None),
    ("dirs-unicode-forms-nested", '[dirs]\npaths = ["caf\\u00e9/x", "cafe\\u0301"]\n', {},
     r"\[dirs\]\.paths\[1\].*different Unicode forms", TOML, None),
    ("dirs-checkpoint-area", '[dirs]\npaths = ["_checkpoint/x"]\n', {}, r"\[dirs\]\.paths\[0\].*checkpoint area",
     TOML, None),
    ("dirs-config-file", '[dirs]\npaths = [".fractfs.toml"]\n', {}, r"\[dirs\]\.paths\[0\].*config file", TOML,
     None),
    ("dirs-long-name", f'[dirs]\npaths = ["{LONG}"]\n', {}, r"\[dirs\]\.paths\[0\].*longer than 255", TOML,
     None),
    ("dirs-long-path", f'[dirs]\npaths = ["{DEEP}"]\n', {}, r"\[dirs\]\.paths\[0\].*too long", TOML, None),
    ("dirs-through-symlink-out", '[dirs]\npaths = ["link/x"]\n', {},
     r"\[dirs\]\.paths\[0\] = 'link/x' goes through .*link, which is a symlink", TOML, _link_out),
    ("dirs-through-symlink-in", '[dirs]\npaths = ["alias/x"]\n', {}, r"\[dirs\]\.paths\[0\].*symlink", TOML,
     _link_in),
    # -- patterns
    ("pattern-empty", '[ignore]\npatterns = [""]\n', {}, r"\[ignore\]\.patterns\[0\] is empty", TOML, None),
    ("pattern-nul", '[ignore]\npatterns = ["a\\u0000"]\n', {}, r"\[ignore\]\.patterns\[0\].*NUL", TOML, None),
    ("pattern-unterminated", '[local]\npatterns = ["*.[ch"]\n', {}, r"\[local\]\.patterns\[0\].*never match",
     TOML, None),
    ("pattern-backslash", "[ignore]\npatterns = ['a\\']\n", {}, r"\[ignore\]\.patterns\[0\].*backslash", TOML,
     None),
    # -- locations
    ("subdir-empty", 'checkpoint_subdir = ""\n', {}, r"checkpoint_subdir = ''", TOML, None),
    ("subdir-up", 'checkpoint_subdir = "a/../.."\n', {}, r"checkpoint_subdir = 'a/\.\./\.\.'", TOML, None),
    ("subdir-absolute", 'checkpoint_subdir = "/x"\n', {}, r"checkpoint_subdir = '/x'", TOML, None),
    ("scratch-empty", 'scratch = ""\n', {}, r"scratch is empty", TOML, None),
    ("scratch-root", 'scratch = "/"\n', {}, r"scratch = '/' contains the app root", TOML, None),
    ("volume-url-for-mount", 'volume_root = "s3://b/x"\nbackend = "volumes"\n', {}, r"is a URL but backend",
     TOML, None),
    # -- environment variables
    ("env-interval-word", None, {"fractfs_SYNC_INTERVAL": "soon"}, r"fractfs_SYNC_INTERVAL = 'soon'",
     "fractfs_SYNC_INTERVAL", None),
    ("env-interval-nan", None, {"fractfs_SYNC_INTERVAL": "nan"}, r"expected a finite", "fractfs_SYNC_INTERVAL",
     None),
    ("env-interval-inf", None, {"fractfs_SYNC_INTERVAL": "1e999"}, r"expected a finite", "fractfs_SYNC_INTERVAL",
     None),
    ("env-interval-huge", None, {"FRACTFS_SYNC_INTERVAL": "1e300"}, r"at most", "FRACTFS_SYNC_INTERVAL", None),
    ("env-interval-hex", None, {"fractfs_SYNC_INTERVAL": "0x10"}, r"expected a number", "fractfs_SYNC_INTERVAL",
     None),
    ("env-transfers-two-words", None, {"fractfs_TRANSFERS": "16 16"}, r"expected a whole number",
     "fractfs_TRANSFERS", None),
    ("env-keep-negative", None, {"fractfs_KEEP_SNAPSHOTS": "-3"}, r"keep at least 1", "fractfs_KEEP_SNAPSHOTS",
     None),
    ("env-bool-empty", None, {"fractfs_CONTENT_HASH": ""}, r"expected true or false", "fractfs_CONTENT_HASH",
     None),
    ("env-bool-word", None, {"fractfs_AUTO_IGNORE_BUNDLE": "maybe"}, r"expected true or false",
     "fractfs_AUTO_IGNORE_BUNDLE", None),
    ("env-scratch-empty", None, {"fractfs_SCRATCH": ""}, r"is empty", "fractfs_SCRATCH", None),
    ("env-scratch-newline", None, {"fractfs_SCRATCH": "/tmp/x\n"}, r"control character", "fractfs_SCRATCH",
     None),
    ("env-scratch-long-name", None, {"fractfs_SCRATCH": "/tmp/" + LONG}, r"longer than 255", "fractfs_SCRATCH",
     None),
    ("env-scratch-long-path", None, {"fractfs_SCRATCH": "/tmp/" + DEEP}, r"too long", "fractfs_SCRATCH", None),
    ("env-volume-newline", None, {"fractfs_VOLUME_ROOT": "{vol}\n"}, r"control character",
     "fractfs_VOLUME_ROOT", None),
    ("env-volume-no-bucket", None, {"fractfs_VOLUME_ROOT": "s3://"}, r"names no bucket", "fractfs_VOLUME_ROOT",
     None),
    ("env-volume-space-url", None, {"fractfs_VOLUME_ROOT": "s3://my bucket/x"}, r"whitespace",
     "fractfs_VOLUME_ROOT", None),
    ("env-volume-inside-root", None, {"fractfs_VOLUME_ROOT": "{root}/vol"}, r"inside the app root",
     "fractfs_VOLUME_ROOT", None),
    ("env-volume-contains-root", None, {"fractfs_VOLUME_ROOT": "{tmp}"}, r"contains the app root",
     "fractfs_VOLUME_ROOT", None),
    ("env-scratch-on-volume", None, {"fractfs_SCRATCH": "{vol}/s"}, r"inside the Volume", "fractfs_SCRATCH",
     None),
    ("env-backend", None, {"fractfs_BACKEND": "gcs"}, r"'gcs' is not a backend", "fractfs_BACKEND", None),
    ("env-subdir-newline", None, {"fractfs_CHECKPOINT_SUBDIR": "a\nb"}, r"control character",
     "fractfs_CHECKPOINT_SUBDIR", None),
    ("env-prefixes-disagree", None, {"fractfs_GRACE": "5", "FRACTFS_GRACE": "6"}, r"disagree", "fractfs_GRACE",
     None),
    ("env-lease-negative", None, {"fractfs_LEASE_TIMEOUT": "-1"}, r"must be a positive",
     "fractfs_LEASE_TIMEOUT", None),
    ("env-unicode-digits-word", None, {"fractfs_TRANSFERS": "sixteen"}, r"expected a whole number",
     "fractfs_TRANSFERS", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_refused_before_anything_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       case: Case) -> None:
    _id, toml, env, pattern, names, setup = case
    root = tmp_path / "app"
    root.mkdir()
    vol = tmp_path / "vol"
    vol.mkdir()
    scratch = tmp_path / "scratch"
    (root / "app.py").write_text("print('app')\n")
    (root / "data").mkdir()
    (root / "data" / "keep.txt").write_text("existing data")
    cfg = root / ".fractfs.toml"
    if toml is not None:
        cfg.write_text(toml, encoding="utf-8")
    elif _id == "toml-not-utf8":
        cfg.write_bytes(b"sync_interval = 3\n# caf\xe9\n")
    if setup is not None:
        setup(root, tmp_path)
    for name in list(os.environ):
        if name.lower().startswith("fractfs_"):
            monkeypatch.delenv(name)
    # the environment wins over the TOML: only point at our Volume and scratch where the case does not set them
    if "volume_root" not in (toml or ""):
        monkeypatch.setenv("fractfs_VOLUME_ROOT", str(vol))
    if "scratch" not in (toml or ""):
        monkeypatch.setenv("fractfs_SCRATCH", str(scratch))
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(vol=vol, root=root, tmp=tmp_path))
    monkeypatch.chdir(root)
    before = snapshot_tree(tmp_path)

    with pytest.raises(ConfigError) as info:
        try:
            fractfs.init(root, start_daemon=False)
        finally:
            fractfs.shutdown(final_sync=False)
    msg = str(info.value)
    assert (str(cfg) if names == TOML else names) in msg, msg
    assert __import__("re").search(pattern, msg), f"{pattern!r} not in {msg!r}"
    assert snapshot_tree(tmp_path) == before
    assert not scratch.exists()
    assert not any(p.is_symlink() for p in root.rglob("*") if p.name not in ("link", "alias"))


def test_corpus_is_large_and_covers_both_sources() -> None:
    assert len(CASES) >= 80
    assert sum(1 for c in CASES if c[4] != TOML) >= 20


def test_empty_strings_that_mean_unset_are_not_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deliberate exceptions: an empty volume_root means 'not configured' (passthrough, one log line), an
    empty backend means 'infer it' -- in the TOML as in the environment."""
    root = tmp_path / "app"
    root.mkdir()
    (root / ".fractfs.toml").write_text('volume_root = ""\nbackend = ""\n')
    for name in list(os.environ):
        if name.lower().startswith("fractfs_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("fractfs_SCRATCH", str(tmp_path / "scratch"))
    st = fractfs.init(root, start_daemon=False)
    try:
        assert st["passthrough"] is True
    finally:
        fractfs.shutdown(final_sync=False)
    assert not (tmp_path / "scratch").exists()

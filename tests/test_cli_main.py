"""The cli package in-process: the command registry, exit codes, error lines, output helpers, and naming a
snapshot the way the command prints it. (tests/test_cli.py runs every command as a real process.)"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from operator_support import env_for, make_app, take_snapshot

from fractfs.cli import build_parser, main
from fractfs.cli.common import resolve_snapshot
from fractfs.cli.exitcodes import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from fractfs.cli.main import COMMANDS
from fractfs.cli.output import Out, Progress, dest, one_line, plural, shorten_ids
from fractfs.errors import CorruptCheckpointError, SnapshotNotFound
from fractfs.snapshot import catalog
from fractfs.snapshot.format import SnapName, short_id
from fractfs.stores.open import open_store


def test_every_command_module_is_registered_with_help_and_a_runner() -> None:
    assert list(COMMANDS) == ["status", "sync", "restore", "snapshots", "explain", "doctor", "verify", "prune"]
    text = build_parser().format_help()
    for name, module in COMMANDS.items():
        assert callable(module.run) and callable(module.configure) and module.HELP and module.DESCRIPTION
        assert name in text


def _run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
         *argv: str) -> tuple[int, str, str]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_exit_codes_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_app(tmp_path)
    env = env_for(tmp_path)
    root = str(cfg.root)
    code, _, err = _run(capsys, monkeypatch, env, "frobnicate")
    assert code == EXIT_USAGE and err.startswith("fractfs: error: ") and err.count("\n") == 1
    assert _run(capsys, monkeypatch, env)[0] == EXIT_USAGE  # no command: usage on stderr

    code, out, _ = _run(capsys, monkeypatch, env, "snapshots", "--root", root)
    assert code == EXIT_OK and out.startswith("no snapshots in ")
    code, _, err = _run(capsys, monkeypatch, env, "verify", "--root", root, "--snapshot", "99")
    assert code == EXIT_USAGE and "snapshot '99' not found" in err and "`fractfs snapshots` lists them" in err

    (cfg.root / "f.txt").write_text("f")
    sid = take_snapshot(cfg)
    code, out, _ = _run(capsys, monkeypatch, env, "snapshots", "--root", root, "--json")
    doc = json.loads(out)
    assert code == EXIT_OK and [d["id"] for d in doc] == [sid] and doc[0]["short"] == short_id(sid)

    code, out, _ = _run(capsys, monkeypatch, env, "status", "--root", root, "--json")
    assert code == EXIT_OK and json.loads(out)["last_snapshot_id"] == sid

    (tmp_path / "volume").rename(tmp_path / "unmounted")
    code, _, err = _run(capsys, monkeypatch, env, "sync", "--root", root)
    assert code == EXIT_PROBLEM and "does not exist or is not mounted" in err
    assert not (tmp_path / "volume").exists()
    code, out, _ = _run(capsys, monkeypatch, env, "status", "--root", root)
    assert code == EXIT_PROBLEM and "store error" in out


def test_a_snapshot_is_named_by_any_form_the_command_prints(tmp_path: Path) -> None:
    cfg = make_app(tmp_path)
    (cfg.root / "f.txt").write_text("f")
    sid = take_snapshot(cfg)
    store = open_store(cfg)
    name = catalog.list_names(store)[0]
    for text in (sid, "1", name.digest[:6], name.short, short_id(sid), f"  {name.short}  "):
        assert resolve_snapshot(store, text) == sid, text
    with pytest.raises(SnapshotNotFound, match="'2-abcdef' not found.*fractfs snapshots"):
        resolve_snapshot(store, "2-abcdef")
    # a hash prefix made only of digits (about 6 % of real prefixes) still names the snapshot
    digits = SnapName(7, "790379" + "a" * 58)
    assert catalog.resolve_id([name, digits], "790379") == digits
    assert catalog.resolve_id([name, digits], "7") == digits  # a sequence number that exists wins
    # callers that caught the old type for an unknown id still catch it
    with pytest.raises(CorruptCheckpointError):
        catalog.resolve_id([name], "99")


def test_short_id_is_snapname_short() -> None:
    n = SnapName(3, "ab" * 32)
    assert short_id(n.id) == n.short == "3-" + ("ab" * 6)
    assert short_id(None) == "-" and short_id("") == "-" and short_id("not-an-id") == "not-an-id"
    assert shorten_ids(f"snapshot {n.id}: bad") == f"snapshot {n.short}: bad"


def test_output_helpers() -> None:
    assert plural(1, "file") == "1 file" and plural(0, "file") == "0 files"
    assert one_line(ValueError("a\n  b\n\n c ")) == "a b c" and one_line(KeyError()) == "KeyError"
    areas = {"root": Path("/app"), "scratch": Path("/s")}
    assert dest("root:x/y", areas) == "x/y" and dest("scratch:x/y", areas) == "/s/x/y"
    assert dest("other:z", areas) == "other:z"
    stdout, stderr = io.StringIO(), io.StringIO()
    out = Out(json_mode=True, quiet=False, verbose=False, stdout=stdout, stderr=stderr)
    out.line("hidden by --json")
    out.info("also hidden")
    out.json({"a": 1})
    out.note("a note")
    out.error("bad")
    assert json.loads(stdout.getvalue()) == {"a": 1}
    assert stderr.getvalue() == "fractfs: a note\nfractfs: error: bad\n"
    assert not out.shows_progress()  # StringIO is not a terminal


def test_progress_renders_and_stays_silent_off_a_terminal() -> None:
    stream = io.StringIO()
    p = Progress("verify", 2048, lambda: 1024, stream, enabled=True)
    assert p.render(1024, 3.2) == "verify [############------------]  50%  1.0 KiB / 2.0 KiB  3s"
    assert Progress("restore", None, lambda: 0, stream, enabled=True).render(10, 0) == "restore  10 B  0s"
    with Progress("verify", 10, lambda: 5, stream, enabled=False):
        pass
    assert stream.getvalue() == ""
    with Progress("verify", 10, lambda: 10, stream, enabled=True, interval=0.01):
        pass
    assert stream.getvalue().startswith("\rverify [") and stream.getvalue().endswith("100%  10 B / 10 B  0s\n")

"""The `fractfs` command, run as a real process (`python -m fractfs` and the installed console script) against
a directory Volume, SeaweedFS S3 and (once) an rclone FUSE mount that refuses symlinks."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from helpers import SRC, run_py

import fractfs
from fractfs.lease import Lease
from fractfs.stores.posix import PosixStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - tomli is a dependency on Python < 3.11
    import tomli as tomllib

CONFIG = """\
[dirs]
paths = ["data/blobs"]
[local]
patterns = ["manifest.json", "*.sqlite"]
[ignore]
patterns = ["*.tmp", ".locks/"]
"""

COMMANDS = ["status", "sync", "restore", "snapshots", "explain", "doctor", "verify", "prune"]

#: What node 1 of the app does: init (provision + record the bundle), write state, checkpoint, stop.
APP_FIRST_RUN = """
import json, os, fractfs
fractfs.init(start_daemon=False)
os.makedirs("state", exist_ok=True)
open("state/counter.txt", "w").write("1")
open("data/blobs/blob.bin", "wb").write(b"B" * 5000)
open("data/blobs/manifest.json", "w").write('{"v": 1}')
open("cache.tmp", "w").write("scratch junk")
print(json.dumps(fractfs.sync_now()))
fractfs.shutdown(final_sync=False)
"""


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("fractfs_")}
    env.pop("AWS_CA_BUNDLE", None)
    pp = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + pp if pp else "")
    env.update(extra or {})
    return env


def console_script() -> list[str]:
    """How to run the ``fractfs`` console script of *this* checkout.

    The script pip generated in the scripts directory of the interpreter running the tests when there is one
    (never whatever ``fractfs`` comes first on PATH, which may be another install); otherwise the entry point
    pyproject.toml declares, run by this interpreter. Either way the code is the checkout's: ``_clean_env``
    puts ``src/`` first on PYTHONPATH, ahead of any installed copy.
    """
    exe = Path(sysconfig.get_path("scripts")) / "fractfs"
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    with open(SRC.parent / "pyproject.toml", "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["fractfs"]
    module, func = target.split(":")
    return [sys.executable, "-c",
            f"import sys; from {module} import {func}; sys.argv[0] = 'fractfs'; sys.exit({func}())"]


def run_cli(
    *args: str,
    env: dict[str, str],
    cwd: Path | None = None,
    expect: int = 0,
    script: bool = False,
    stderr: Any = subprocess.PIPE,
) -> subprocess.CompletedProcess[str]:
    """Run the command; check the exit code, and that no traceback ever reaches the user."""
    if script:
        argv = [*console_script(), *args]
    else:
        argv = [sys.executable, "-m", "fractfs", *args]
    proc = subprocess.run(argv, env=env, cwd=str(cwd) if cwd else None, stdout=subprocess.PIPE, stderr=stderr,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    where = f"$ fractfs {' '.join(args)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}\n{where}"
    assert "Traceback" not in (proc.stdout or "") + (proc.stderr or ""), where
    return proc


def run_many(argvs: list[list[str]], *, env: dict[str, str], cwd: Path,
             envs: list[dict[str, str]] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Several independent invocations at once (they only read): keeps the help/usage checks quick."""
    procs = [subprocess.Popen([sys.executable, "-m", "fractfs", *argv], env=envs[i] if envs else env,
                              cwd=str(cwd), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
             for i, argv in enumerate(argvs)]
    done = []
    for argv, p in zip(argvs, procs):
        out, err = p.communicate(timeout=120)
        assert "Traceback" not in out + err, (argv, err)
        done.append(subprocess.CompletedProcess(argv, p.returncode, out, err))
    return done


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fractfs: error: "), lines[0]
    return lines[0]


class App:
    """An app root and scratch on 'node-local' disk, a Volume, and the env both the app and the CLI see."""

    def __init__(self, base: Path, volume: str | Path, config: str = CONFIG, **env: str):
        self.base = base
        self.root = base / "app"
        self.scratch = base / "scratch"
        self.volume = volume
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".fractfs.toml").write_text(config)
        (self.root / "app.py").write_text("print('the deploy bundle')\n")
        self.env = _clean_env({
            "fractfs_VOLUME_ROOT": str(volume),
            "fractfs_SCRATCH": str(self.scratch),
            "fractfs_SYNC_INTERVAL": "3600",
            **env,
        })

    def first_run(self) -> list[str]:
        proc = run_py(APP_FIRST_RUN, env=self.env, cwd=self.root)
        stored: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
        return stored

    def cli(self, *args: str, expect: int = 0, script: bool = False, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=env or self.env, cwd=cwd or self.root, expect=expect, script=script)

    def cli_json(self, *args: str, expect: int = 0) -> Any:
        return json.loads(self.cli(*args, "--json", expect=expect).stdout)


@pytest.fixture
def app(tmp_path: Path, plain_volume: Path) -> App:
    a = App(tmp_path, plain_volume)
    assert sorted(a.first_run()) == ["data/blobs/manifest.json", "state/counter.txt"]
    return a


# -- help, version, bad arguments, config errors ---------------------------------------------------------


def test_help_on_every_command_and_version(tmp_path: Path) -> None:
    env = _clean_env()
    top, *subs = run_many([["--help"]] + [[cmd, "--help"] for cmd in COMMANDS], env=env, cwd=tmp_path)
    assert top.returncode == 0 and top.stdout.startswith("usage: fractfs")
    for cmd, proc in zip(COMMANDS, subs):
        assert cmd in top.stdout
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: fractfs {cmd}"), proc.stdout
        assert "--root" in proc.stdout  # global options are accepted after the command too
    # the console script runs this checkout's code, whatever else is installed
    assert run_cli("--version", env=env, cwd=tmp_path, script=True).stdout.split() == ["fractfs",
                                                                                      fractfs.__version__]


BAD_ARGUMENTS = [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["restore", "--snapshot"], "--snapshot: expected one argument"),
    (["prune", "--keep", "many"], "invalid int value"),
    (["verify", "--all", "--snapshot", "1"], "not allowed with"),
    (["explain"], "the following arguments are required: PATH"),
    (["status", "--bogus"], "unrecognized arguments: --bogus"),
]


def test_bad_arguments_exit_2_with_one_line(tmp_path: Path) -> None:
    procs = run_many([argv for argv, _ in BAD_ARGUMENTS], env=_clean_env(), cwd=tmp_path)
    for (argv, needle), proc in zip(BAD_ARGUMENTS, procs):
        assert proc.returncode == 2, (argv, proc.stderr)
        assert needle in one_error_line(proc)
        assert proc.stdout == ""


def test_no_command_prints_usage_and_exits_2(tmp_path: Path) -> None:
    proc = run_cli(env=_clean_env(), cwd=tmp_path, expect=2)
    assert "usage: fractfs" in proc.stderr


def test_config_errors_exit_2_naming_file_and_key(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / ".fractfs.toml").write_text('[dirs]\npaths = "data"\n')
    env = _clean_env({"fractfs_VOLUME_ROOT": str(tmp_path / "vol")})
    for cmd in ("status", "sync", "doctor"):
        line = one_error_line(run_cli(cmd, env=env, cwd=root, expect=2))
        assert ".fractfs.toml" in line and "[dirs].paths" in line
    # the same file found through --root and through fractfs_ROOT, from another directory
    assert "[dirs].paths" in one_error_line(run_cli("--root", str(root), "status", env=env, cwd=tmp_path,
                                                    expect=2))
    env_root = {**env, "fractfs_ROOT": str(root)}
    assert "[dirs].paths" in one_error_line(run_cli("snapshots", env=env_root, cwd=tmp_path, expect=2))
    line = one_error_line(run_cli("status", "--root", str(tmp_path / "missing"), env=env, cwd=tmp_path,
                                  expect=2))
    assert "(--root) is not a directory" in line
    bad_env = {**env, "fractfs_SYNC_INTERVAL": "soon"}
    (root / ".fractfs.toml").write_text("")
    assert "fractfs_SYNC_INTERVAL" in one_error_line(run_cli("status", env=bad_env, cwd=root, expect=2))


def test_passthrough_without_a_volume(tmp_path: Path) -> None:
    """No volume_root is a configuration, not a store failure: the commands that describe it work, and every
    command that needs the store exits 2 with the same one line naming the setting."""
    (tmp_path / ".fractfs.toml").write_text(CONFIG)
    env = _clean_env()
    assert "passthrough" in run_cli("status", env=env, cwd=tmp_path).stdout
    assert "passthrough" in run_cli("explain", "state/x", env=env, cwd=tmp_path).stdout
    assert "passthrough" in run_cli("doctor", env=env, cwd=tmp_path).stdout
    side = tmp_path.parent / f"{tmp_path.name}-side"
    needs_store = [["sync"], ["snapshots"], ["snapshots", "--json"], ["restore"], ["restore", "--to", str(side)],
                   ["verify"], ["prune"]]
    for argv, proc in zip(needs_store, run_many(needs_store, env=env, cwd=tmp_path)):
        assert proc.returncode == 2 and proc.stdout == "", (argv, proc.returncode, proc.stdout, proc.stderr)
        line = one_error_line(proc)
        assert "no volume configured (passthrough mode)" in line and "volume_root" in line, (argv, line)
        assert str(tmp_path / ".fractfs.toml") in line and "fractfs_VOLUME_ROOT" in line, (argv, line)
    assert not side.exists()


# -- a directory Volume --------------------------------------------------------------------------------


def test_status_human_and_json(app: App) -> None:
    out = app.cli("status").stdout
    assert f"store       {app.volume}/_checkpoint" in out
    assert "data/blobs -> " in out and "(linked)" in out
    assert "manifest.json, *.sqlite" in out and "last        1-" in out
    assert "sync        every 3600s (watch)" in out
    manual = app.cli("status", env={**app.env, "fractfs_SYNC_INTERVAL": "0"}).stdout
    assert "sync        manual (sync_interval = 0: no background checkpoints" in manual

    st = app.cli_json("status")
    assert st["root"] == str(app.root) and st["backend"] == "local"
    assert st["dirs"]["data/blobs"]["linked"] is True
    assert st["capabilities"]["symlinks"] is True
    assert st["pins"] == ["data/blobs/.locks/", "data/blobs/manifest.json"]
    assert st["snapshot_count"] == 1 and st["files"] == 2 and st["store_error"] is None
    assert st["bundle_file_count"] == 2  # app.py and .fractfs.toml, recorded by the app's init()
    # the app released its lease when it stopped, and left its last status behind for this command
    assert st["lease"] is None or (st["lease"]["state"] == "free" and not st["lease"]["blocks_writers"])
    if st["app"] is not None:
        assert st["app"]["alive"] is False and st["daemon_running"] is False
    # the same data from the app itself: the CLI reads the checkpoint the app wrote
    snaps = app.cli_json("snapshots")
    assert st["last_snapshot_id"] == snaps[-1]["id"]


def test_sync_snapshots_and_explain(app: App) -> None:
    (app.root / "state" / "counter.txt").write_text("2")
    (app.root / "state" / "new.txt").write_text("new")
    (app.root / "data" / "blobs" / "manifest.json").write_text('{"v": 2}')
    (app.root / "more.tmp").write_text("ignored")
    out = app.cli("sync", script=True).stdout  # the installed console script
    assert out.startswith("snapshot 2-")
    stored = sorted(ln.split()[-1] for ln in out.splitlines() if ln.startswith("  stored"))
    assert stored == ["data/blobs/manifest.json", "state/counter.txt", "state/new.txt"]
    assert "no changes" in app.cli("sync").stdout
    doc = app.cli_json("sync")
    assert doc["snapshot_id"] is None and doc["stored"] == [] and doc["bundle"] == "recorded"

    snaps = app.cli_json("snapshots")
    assert [s["seq"] for s in snaps] == [1, 2] and all(s["valid"] for s in snaps)
    assert snaps[1]["node"].endswith(":cli") and snaps[1]["files"] == 3
    table = app.cli("snapshots").stdout.splitlines()
    assert table[0].split() == ["ID", "TIME", "FILES", "SIZE", "NODE"]
    assert table[2].startswith(snaps[1]["short"])

    paths = ["app.py", "state/new.txt", "data/blobs/manifest.json", "data/blobs/blob.bin", "more.tmp",
             "data/blobs/db.sqlite", "data/blobs/.locks/x", "data/blobs"]
    docs = {d["input"]: d for d in app.cli_json("explain", *paths)}
    assert docs["app.py"]["tier"] == "default" and docs["app.py"]["checkpointed"] is False
    assert "deploy bundle" in docs["app.py"]["checkpoint_reason"]
    assert docs["state/new.txt"]["checkpointed"] is True and docs["state/new.txt"]["in_snapshot"] is True
    assert docs["state/new.txt"]["rule_text"] == "no rule matched: default tier"
    man = docs["data/blobs/manifest.json"]
    assert (man["tier"], man["table"], man["rule"]) == ("local", "local", "manifest.json")
    assert man["location"] == str(app.scratch / "data/blobs/manifest.json") and man["location_kind"] == "scratch"
    assert man["checkpointed"] is True and man["in_snapshot"] is True
    blob = docs["data/blobs/blob.bin"]
    assert (blob["tier"], blob["rule"]) == ("dirs", "data/blobs")
    assert blob["location"] == f"{app.volume}/data/blobs/blob.bin" and blob["checkpointed"] is False
    assert "durable already" in blob["checkpoint_reason"]
    assert docs["more.tmp"]["tier"] == "ignore" and docs["more.tmp"]["rule"] == "*.tmp"
    glob = docs["data/blobs/db.sqlite"]  # a glob cannot be pinned: the file follows the dir onto the Volume
    assert glob["tier"] == "local" and glob["location_kind"] == "volume-unpinned"
    assert glob["checkpointed"] is False
    locks = docs["data/blobs/.locks/x"]
    assert locks["matched_as"] == "data/blobs/.locks/" and locks["location_kind"] == "scratch"
    assert docs["data/blobs"]["location_kind"] == "volume"

    human = app.cli("explain", "../data/blobs/manifest.json", "more.tmp", cwd=app.root / "state").stdout
    assert "rule          [local].patterns 'manifest.json'" in human
    assert "through the pin" in human and "checkpointed  yes" in human
    # relative to the current directory, like git: state/ is the cwd here, so "more.tmp" is state/more.tmp
    assert "state/more.tmp  (does not exist yet)" in human
    bad = app.cli("explain", "state/new.txt", "/etc/passwd", expect=2)
    assert "outside the app root" in one_error_line(bad) and "state/new.txt" in bad.stdout


def test_sync_lists_new_files_whose_content_was_already_stored(app: App) -> None:
    """`fractfs sync` prints what sync_now() returns: new files are listed even when their bytes were stored
    before (here those of state/counter.txt); deletions are printed separately."""
    for name in ("copy1.txt", "copy2.txt"):
        (app.root / "state" / name).write_text("1")
    (app.root / "state" / "counter.txt").unlink()
    out = app.cli("sync").stdout.splitlines()
    assert "2 stored, 1 deleted" in out[0], out
    assert out[1:] == ["  stored   state/copy1.txt", "  stored   state/copy2.txt", "  deleted  state/counter.txt"]
    (app.root / "state" / "copy3.txt").write_text("1")
    doc = app.cli_json("sync")
    assert doc["stored"] == ["state/copy3.txt"] and doc["deleted"] == []
    assert doc["uploaded_bytes"] < 2000  # the new manifest only: the bytes were already stored


def test_restore_default_overwrite_dry_run_and_point_in_time(app: App) -> None:
    first = app.cli_json("snapshots")[0]["short"]
    (app.root / "state" / "counter.txt").write_text("2")
    (app.root / "state" / "new.txt").write_text("new")
    (app.root / "data" / "blobs" / "manifest.json").write_text('{"v": 2}')
    app.cli("sync")
    # the node loses a file and edits another
    (app.root / "state" / "new.txt").unlink()
    (app.root / "state" / "counter.txt").write_text("local edit")

    dry = app.cli("restore", "--dry-run").stdout
    assert "would write  state/new.txt" in dry and "counter" not in dry.split("kept")[0]
    assert not (app.root / "state" / "new.txt").exists()
    out = app.cli("restore").stdout
    assert out.startswith("restored 1 file ") and "already present, kept" in out
    assert (app.root / "state" / "new.txt").read_text() == "new"
    assert (app.root / "state" / "counter.txt").read_text() == "local edit"  # missing files only

    dry = app.cli_json("restore", "--overwrite", "--dry-run")
    assert dry["restored"] == ["root:state/counter.txt"]  # identical files are not listed as written
    assert (app.root / "state" / "counter.txt").read_text() == "local edit"
    app.cli("restore", "--overwrite")
    assert (app.root / "state" / "counter.txt").read_text() == "2"

    # yesterday's state into a side directory, by the short id `fractfs snapshots` prints
    side = app.base / "side"
    proc = app.cli("restore", "--snapshot", first, "--to", str(side))
    assert f"{side}/.fractfs-scratch" in proc.stderr  # it says where the scratch area went
    assert (side / "state" / "counter.txt").read_text() == "1"
    assert (side / ".fractfs-scratch" / "data/blobs/manifest.json").read_text() == '{"v": 1}'
    assert not (side / "state" / "new.txt").exists()
    assert (app.root / "state" / "counter.txt").read_text() == "2"  # the app tree is untouched
    # by sequence number too, and a dry run into another directory writes nothing
    side2 = app.base / "side2"
    assert "would write  state/counter.txt" in app.cli("restore", "--snapshot", "1", "--to", str(side2),
                                                       "--dry-run").stdout
    assert not (side2 / "state").exists()

    line = one_error_line(app.cli("restore", "--snapshot", "99", expect=2))
    assert "snapshot '99' not found" in line


def test_restore_to_refuses_the_apps_own_places(app: App) -> None:
    """--to inside the app root (directly, relative, or through a symlink that resolves into it), scratch or
    a [dirs] directory would let the next checkpoint store the restored copy as app data: exit 2, say why,
    write nothing."""
    (app.base / "elsewhere").symlink_to(app.root / "state")
    before = sorted(str(p) for p in app.base.rglob("*"))
    targets = [
        (str(app.root / "restored"), "the app root"),
        (str(app.root), "the app root"),
        ("restored-here", "the app root"),  # relative to the current directory, the app root
        (str(app.base / "elsewhere" / "copy"), "the app root"),  # a symlink into the root
        (str(app.scratch / "copy"), "the scratch directory"),
        (str(app.scratch / ".fractfs-state"), "the scratch directory"),
        (str(app.root / "data" / "blobs" / "copy"), "the app root"),  # through the [dirs] link
        (str(Path(app.volume) / "data" / "blobs" / "copy"), "the [dirs] directory 'data/blobs' on the Volume"),
        (str(Path(app.volume) / "_checkpoint" / "copy"), "the checkpoint area"),
    ]
    procs = run_many([["restore", "--to", t] for t, _ in targets], env=app.env, cwd=app.root)
    for (target, where), proc in zip(targets, procs):
        assert proc.returncode == 2, (target, proc.returncode, proc.stdout, proc.stderr)
        line = one_error_line(proc)
        assert f"--to {target} is inside {where}" in line, line
        assert "the next checkpoint would store the restored copy" in line or "Volume" in line \
            or "checkpoint area" in line, line
    assert sorted(str(p) for p in app.base.rglob("*")) == before
    # next to the app (not in it) is fine
    app.cli("restore", "--to", str(app.base / "copy"))
    assert (app.base / "copy" / "state" / "counter.txt").read_text() == "1"


def test_verify_reports_damage_with_exit_1(app: App) -> None:
    out = app.cli("verify").stdout
    assert out.startswith("ok: 1 snapshot (1-") and "no damage" in out
    packs = sorted((Path(app.volume) / "_checkpoint" / "packs").rglob("*"))
    pack = next(p for p in packs if p.is_file())
    key = pack.relative_to(Path(app.volume) / "_checkpoint").as_posix()
    data = bytearray(pack.read_bytes())
    data[0] ^= 0x01  # inside the first file's bytes (a v2 pack ends with its index, which no restore reads)
    pack.write_bytes(bytes(data))

    proc = app.cli("verify", expect=1)
    assert f"damaged object    {key}" in proc.stdout
    assert "DAMAGE:" in proc.stdout and proc.stderr == ""
    doc = app.cli_json("verify", "--all", expect=1)
    assert doc["ok"] is False and doc["bad_objects"] == [key]
    assert doc["damaged_files"] and all(key in msg for msg in doc["damaged_files"])
    # a restore from the damaged store refuses the bad bytes and says so
    side = app.base / "side"
    bad = app.cli("restore", "--to", str(side), expect=1)
    assert "error" in bad.stdout and "sha256" in bad.stdout
    assert "not found" in one_error_line(app.cli("verify", "--snapshot", "abcdef", expect=2))


def test_prune_dry_run_then_real(app: App) -> None:
    (app.root / "state" / "counter.txt").write_text("2")
    (app.root / "state" / "gen2.txt").write_text("x" * 2000)
    app.cli("sync")
    # generation 3 drops everything of generation 2's pack: once 1 and 2 are gone, that pack is garbage
    (app.root / "state" / "counter.txt").write_text("3")
    (app.root / "state" / "gen2.txt").unlink()
    app.cli("sync")
    assert len(app.cli_json("snapshots")) == 3
    dry = app.cli("prune", "--keep", "1", "--dry-run").stdout
    assert dry.count("would remove snapshot") == 2 and dry.startswith("would remove snapshot  1-")
    assert len(app.cli_json("snapshots")) == 3
    doc = app.cli_json("prune", "--keep", "1")
    assert len(doc["deleted_snapshots"]) == 2 and len(doc["kept"]) == 1 and doc["deleted_objects"]
    assert [s["seq"] for s in app.cli_json("snapshots")] == [3]
    assert app.cli("verify", "--all").stdout.startswith("ok: 1 snapshot")
    assert "keep at least 1" in one_error_line(app.cli("prune", "--keep", "0", expect=2))


def test_doctor_ok_then_fail_when_the_volume_is_gone(app: App) -> None:
    proc = app.cli("doctor")
    lines = proc.stdout.splitlines()
    assert all(ln.split()[0] in ("ok", "warn") for ln in lines[:-1]), proc.stdout
    assert any(ln.startswith("ok    [dirs] data/blobs: linked") for ln in lines)
    assert any("writable (probe object written" in ln for ln in lines)
    assert any(ln.startswith("ok    pins: 2 in place") for ln in lines)
    assert lines[-1].endswith("0 failures")
    doc = app.cli_json("doctor")
    assert doc["ok"] is True and {f["level"] for f in doc["findings"]} <= {"ok", "warn"}

    shutil.rmtree(app.volume)
    proc = app.cli("doctor", expect=1)
    fails = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAIL")]
    assert any("Volume" in ln and "not reachable" in ln and " — mount the Volume" in ln for ln in fails)
    assert any("[dirs] data/blobs" in ln and "does not exist" in ln for ln in fails)
    # the CLI never mistakes an unmounted Volume for an empty store, nor creates it
    assert "does not exist or is not mounted" in one_error_line(app.cli("sync", expect=1))
    assert "store error" in app.cli("status", expect=1).stdout
    assert not Path(app.volume).exists()


def test_doctor_flags_a_real_directory_in_the_way(tmp_path: Path, plain_volume: Path) -> None:
    a = App(tmp_path, plain_volume, config=CONFIG + 'bogus_key = 1\n')
    (a.root / "data" / "blobs").mkdir(parents=True)
    (a.root / "data" / "blobs" / "precious.bin").write_text("data")
    proc = a.cli("doctor", expect=1)
    assert any(ln.startswith("FAIL  [dirs] data/blobs") and "force=True" in ln for ln in proc.stdout.splitlines())
    assert any(ln.startswith("warn  config:") and "bogus_key" in ln for ln in proc.stdout.splitlines())
    assert any(ln.startswith("warn  snapshots: none yet") for ln in proc.stdout.splitlines())


def test_lease_held_by_another_node_blocks_sync_and_prune(app: App) -> None:
    other = Lease(PosixStore(Path(app.volume) / "_checkpoint"), "other-node:42", timeout=60)
    assert other.tick()
    (app.root / "state" / "counter.txt").write_text("2")
    line = one_error_line(app.cli("sync", expect=1))
    assert "other-node:42 holds the single-writer lease" in line and "--force" in line
    assert "holds the single-writer lease" in one_error_line(app.cli("prune", "--keep", "1", expect=1))
    st = app.cli_json("status")
    assert st["lease"]["holder"] == "other-node:42" and st["lease"]["state"] == "live"
    assert "lease       other-node:42: live" in app.cli("status").stdout
    assert app.cli("sync", "--force").stdout.startswith("snapshot 2-")
    other.release()
    (app.root / "state" / "counter.txt").write_text("3")
    assert app.cli("sync").stdout.startswith("snapshot 3-")


def test_progress_bar_only_on_a_terminal(app: App) -> None:
    master, slave = pty.openpty()
    try:
        proc = run_cli("verify", env=app.env, cwd=app.root, stderr=slave)
        os.close(slave)
        slave = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert b"\rverify [" in drawn and b"100%" in drawn
    assert "\r" not in proc.stdout and proc.stdout.startswith("ok: ")
    # in a pipe (every other test): no progress line at all
    assert app.cli("verify").stderr == ""


# -- SeaweedFS S3 ------------------------------------------------------------------------------------------


def test_s3_every_command(tmp_path: Path, seaweed: Any, s3_url: str) -> None:
    a = App(tmp_path, s3_url, config='[local]\npatterns = ["*.sqlite"]\n[ignore]\npatterns = ["*.tmp"]\n',
            fractfs_BACKEND="s3", fractfs_AUTO_IGNORE_BUNDLE="false", **seaweed.env)
    (a.root / "state").mkdir()
    (a.root / "state" / "counter.txt").write_text("1")
    (a.root / "junk.tmp").write_text("x")
    out = a.cli("sync", script=True).stdout
    assert out.startswith("snapshot 1-"), out
    assert "  stored   state/counter.txt" in out and "junk.tmp" not in out
    (a.root / "state" / "counter.txt").write_text("2")
    (a.root / "state" / "db.sqlite").write_text("not really")
    doc = a.cli_json("sync")
    assert "state/db.sqlite" in doc["stored"] and doc["snapshot_id"]

    # read-only commands at once: each process pays for importing s3fs, not for waiting on the others
    side = tmp_path / "side"
    status, snaps_p, explain, doctor, restore, verify = run_many(
        [["status", "--json"], ["snapshots", "--json"], ["explain", "--json", "state/db.sqlite", "junk.tmp"],
         ["doctor"], ["restore", "--snapshot", "1", "--to", str(side)], ["verify", "--all"]],
        env=a.env, cwd=a.root)
    assert [p.returncode for p in (status, snaps_p, explain, doctor, restore, verify)] == [0] * 6, \
        [p.stderr for p in (status, snaps_p, explain, doctor, restore, verify)]
    st = json.loads(status.stdout)
    assert st["checkpoint_location"] == f"{s3_url}/_checkpoint" and st["backend"] == "s3"
    assert st["store_error"] is None and st["snapshot_count"] == 2
    assert [s["seq"] for s in json.loads(snaps_p.stdout)] == [1, 2]
    ex = json.loads(explain.stdout)
    assert ex[0]["tier"] == "local" and ex[0]["in_snapshot"] is True and ex[1]["checkpointed"] is False
    assert any(ln.startswith(f"ok    store {s3_url}/_checkpoint: reachable") for ln in doctor.stdout.splitlines())
    assert any("writable (probe object" in ln for ln in doctor.stdout.splitlines())
    assert (side / "state" / "counter.txt").read_text() == "1" and not (side / "state" / "db.sqlite").exists()
    assert verify.stdout.startswith("ok: 2 snapshots")

    # damage a pack in the bucket: verify names it and exits 1; a wrong secret is a FAIL naming the variables
    client = seaweed.client()
    bucket, _, prefix = s3_url[len("s3://"):].partition("/")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_checkpoint/packs/")
            .get("Contents", [])]
    body = bytearray(client.get_object(Bucket=bucket, Key=keys[0])["Body"].read())
    body[0] ^= 0x01
    client.put_object(Bucket=bucket, Key=keys[0], Body=bytes(body))
    wrong = {**a.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    damaged, denied = run_many([["verify", "--all"], ["doctor"]], env=a.env, envs=[a.env, wrong], cwd=a.root)
    assert damaged.returncode == 1 and keys[0].split("/_checkpoint/", 1)[1] in damaged.stdout
    fail = [ln for ln in denied.stdout.splitlines() if ln.startswith("FAIL")]
    assert denied.returncode == 1 and fail, denied.stdout
    assert "access denied" in fail[0] and "AWS_ACCESS_KEY_ID" in fail[0]

    doc = a.cli_json("prune", "--keep", "1")
    assert len(doc["deleted_snapshots"]) == 1


# -- a FUSE Volume without symlinks ---------------------------------------------------------------------------


def test_fuse_volume_explain_says_the_pin_is_impossible(tmp_path: Path, fuse_volume: Path) -> None:
    a = App(tmp_path, fuse_volume)
    run_py("import fractfs; fractfs.init(start_daemon=False); fractfs.shutdown(final_sync=False)",
           env=a.env, cwd=a.root)
    doc = a.cli_json("explain", "data/blobs/manifest.json")[0]
    assert doc["location"] == f"{fuse_volume}/data/blobs/manifest.json"
    assert doc["location_note"] == "on the Volume (pin not possible: the Volume refuses symlinks)"
    assert doc["checkpointed"] is False
    proc = a.cli("doctor")
    assert any(ln.startswith("warn  Volume: refuses symlinks, so 2 pin(s)") for ln in proc.stdout.splitlines())


def test_status_health_and_exit_code_for_a_monitor(app: App) -> None:
    """`fractfs status` is what a monitor polls: healthy -> exit 0 and 'health ok'; the Volume gone -> exit 1,
    'UNHEALTHY' with the problem's kind, and the same under --json."""
    assert "health      ok" in app.cli("status").stdout
    assert app.cli_json("status")["healthy"] is True
    Path(app.volume).rename(str(app.volume) + ".away")
    try:
        out = app.cli("status", expect=1).stdout
        assert "health      UNHEALTHY" in out and "  - volume-missing: " in out, out
        st = app.cli_json("status", expect=1)
        assert st["healthy"] is False and [p["kind"] for p in st["problems"]] == ["volume-missing"], st["problems"]
    finally:
        Path(str(app.volume) + ".away").rename(app.volume)
    assert app.cli_json("status")["healthy"] is True

"""The public API end to end, each node a fresh Python process, on a plain dir, a tmpfs and a FUSE volume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import helpers
from helpers import run_py

CONFIG = """\
[dirs]
paths = ["data/blobs", "exports"]
[local]
patterns = ["manifest.json", "*.sqlite"]
[ignore]
patterns = ["*.tmp", ".locks/", "*.lock"]
"""


class Node(helpers.Node):
    """The shared test node with this module's app: a deploy bundle of one file, the Volume as a mount."""

    def __init__(self, base: Path, volume: Path, config: str = CONFIG):
        super().__init__(base, volume, config, bundle={"app.py": "print('app')\n"},
                         env={"fractfs_BACKEND": "volumes"})


def tree(path: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(path))] = p.read_bytes()
    return out


def test_passthrough_without_volume(tmp_path: Path) -> None:
    node = Node(tmp_path, tmp_path / "unused")
    proc = node.run(
        """
        import logging; logging.basicConfig(level=logging.INFO)
        st = fractfs.init()
        print(json.dumps({"stored": fractfs.sync_now(), "st": st, "link": os.path.islink("data/blobs")}))
        fractfs.shutdown()
    """,
        check=False,
        fractfs_VOLUME_ROOT="",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["stored"] == [] and out["link"] is False and out["st"]["passthrough"] is True
    assert "passthrough" in proc.stderr
    assert not (tmp_path / "unused").exists() and not node.scratch.exists()


def test_init_provisions_and_reports(tmp_path: Path, volume: Path) -> None:
    node = Node(tmp_path, volume)
    st = node.run("""
        st = fractfs.init()
        with open("data/blobs/big.bin", "wb") as f: f.write(b"B" * 100_000)
        json.dumps(fractfs.status())  # must be JSON-serialisable
        print(json.dumps(fractfs.status()))
        fractfs.shutdown()
    """)
    for d in ("data/blobs", "exports"):
        link = node.root / d
        assert link.is_symlink() and Path(os.readlink(link)) == volume / d
        assert st["dirs"][d]["tier"] == "dirs" and st["dirs"][d]["linked"] is True
    assert (volume / "data/blobs/big.bin").stat().st_size == 100_000  # the bytes are on the Volume
    for key in (
        "backend",
        "volume_root",
        "scratch",
        "sync_interval",
        "daemon_running",
        "last_sync_time",
        "bundle_file_count",
        "patterns",
        "warnings",
    ):
        assert key in st, key
    assert st["backend"] == "volumes" and st["volume_root"] == str(volume) and st["daemon_running"] is True
    assert st["patterns"]["local"] == ["manifest.json", "*.sqlite"]
    assert st["bundle_file_count"] == 2  # .fractfs.toml + app.py
    assert any("*.lock" in w for w in st["warnings"])  # a glob that cannot be pre-pinned

    # a second init converges without changing anything
    before = tree(volume)
    st2 = node.run("print(json.dumps(fractfs.init())); fractfs.shutdown()")
    assert st2["dirs"]["data/blobs"]["linked"] is True and tree(volume).keys() >= before.keys()


def test_cold_restart_restores_before_init_returns(tmp_path: Path, volume: Path) -> None:
    node = Node(tmp_path, volume)
    stored = node.run("""
        fractfs.init()
        os.makedirs("state/deep", exist_ok=True)
        open("state/deep/a.txt", "w").write("alpha")
        open("notes.txt", "w").write("node one")
        open("junk.tmp", "w").write("never saved")
        print(json.dumps(sorted(fractfs.sync_now())))
        fractfs.shutdown()
    """)
    assert "notes.txt" in stored and "state/deep/a.txt" in stored and "junk.tmp" not in stored
    assert "app.py" not in stored and ".fractfs.toml" not in stored  # the deploy bundle is not checkpointed
    node.wipe()
    out = node.run("""
        st = fractfs.init()
        # read immediately: init() has already restored
        print(json.dumps({"a": open("state/deep/a.txt").read(), "n": open("notes.txt").read(),
                          "tmp": os.path.exists("junk.tmp"), "restored": st["restore"]["restored"]}))
        fractfs.shutdown()
    """)
    assert out == {"a": "alpha", "n": "node one", "tmp": False, "restored": 2}


def test_file_a_cold_restore_could_not_verify_is_not_deleted(tmp_path: Path, volume: Path) -> None:
    """A damaged pack costs the app one file at restore, never the file's last good copy on the store."""
    node = Node(tmp_path, volume)
    payload = "precious state that a flipped bit will spoil " * 30
    node.run(f"""
        fractfs.init()
        os.makedirs("state", exist_ok=True)
        open("state/precious.txt", "w").write({payload!r})
        open("notes.txt", "w").write("node one")
        fractfs.shutdown()
    """)
    packs = [p for p in (volume / "_checkpoint").rglob("*") if p.is_file() and payload.encode() in p.read_bytes()]
    assert len(packs) == 1
    good = packs[0].read_bytes()
    at = good.find(payload.encode())
    packs[0].write_bytes(good[:at] + b"X" + good[at + 1:])

    node.wipe()
    out = node.run("""
        st = fractfs.init()
        open("notes.txt", "a").write(", node two")
        fractfs.sync_now()
        after = fractfs.status()
        fractfs.shutdown()
        print(json.dumps({"exists": os.path.exists("state/precious.txt"), "errors": st["restore"]["errors"],
                          "warned": [w for w in st["warnings"] if "precious" in w],
                          "kept": after["kept_unrestored"]}))
    """)
    assert not out["exists"] and len(out["errors"]) == 1 and "sha256" in out["errors"][0] and out["warned"]
    assert out["kept"] == ["state/precious.txt"]

    packs[0].write_bytes(good)  # the operator repairs the store (e.g. from a bucket's object versioning)
    node.wipe()
    out = node.run("""
        st = fractfs.init()
        print(json.dumps({"p": open("state/precious.txt").read(), "n": open("notes.txt").read(),
                          "errors": st["restore"]["errors"]}))
        fractfs.shutdown()
    """)
    assert out == {"p": payload, "n": "node one, node two", "errors": []}


def test_shutdown_runs_final_checkpoint(tmp_path: Path, volume: Path) -> None:
    node = Node(tmp_path, volume)
    node.run("""
        fractfs.init()
        open("late.txt", "w").write("written just before stop")
        fractfs.shutdown()
        fractfs.shutdown()  # idempotent
        print("[]")
    """)
    node.wipe()
    assert node.run("fractfs.init(); print(json.dumps([open('late.txt').read()])); fractfs.shutdown()") == [
        "written just before stop"
    ]


def test_sync_now_lists_every_file_with_new_content(tmp_path: Path, volume: Path) -> None:
    """sync_now() returns each path the snapshot holds new content for, uploaded now or already stored (three
    new files with an existing file's bytes, one of them pinned in scratch, are all listed and the bytes are
    stored once); deletions and a change of mtime alone are not listed."""
    node = Node(tmp_path, volume)
    out = node.run("""
        fractfs.init(start_daemon=False)
        os.makedirs("state", exist_ok=True)
        for name, text in [("orig.txt", "shared bytes"), ("edit.txt", "v1"), ("touch.txt", "t"), ("gone.txt", "g")]:
            open("state/" + name, "w").write(text)
        first = fractfs.sync_now()
        open("state/copy1.txt", "w").write("shared bytes")
        open("state/copy2.txt", "w").write("shared bytes")
        open("data/blobs/manifest.json", "w").write("shared bytes")  # a pinned [local] file in scratch
        open("state/edit.txt", "w").write("v2")
        open("state/empty.txt", "w").close()
        os.utime("state/touch.txt", (1_700_000_000, 1_700_000_000))
        os.remove("state/gone.txt")
        second = fractfs.sync_now()
        third = fractfs.sync_now()
        fractfs.shutdown(final_sync=False)
        # a Volume that refuses symlinks cannot pin it: then it lives on the Volume and is not checkpointed
        pinned = os.path.exists(os.path.join(os.environ["fractfs_SCRATCH"], "data/blobs/manifest.json"))
        print(json.dumps({"first": first, "second": second, "third": third, "pinned": pinned}))
    """)
    assert sorted(out["first"]) == ["state/edit.txt", "state/gone.txt", "state/orig.txt", "state/touch.txt"]
    assert sorted(out["second"]) == ["data/blobs/manifest.json"] * out["pinned"] + [
        "state/copy1.txt", "state/copy2.txt", "state/edit.txt", "state/empty.txt"]
    assert out["third"] == []
    packs = volume / "_checkpoint" / "packs"  # plain concatenations of file contents (docs/format.md)
    assert b"".join(p.read_bytes() for p in packs.rglob("*") if p.is_file()).count(b"shared bytes") == 1


def test_clobber_guard_and_force_migration(tmp_path: Path, volume: Path) -> None:
    node = Node(tmp_path, volume)
    blobs = node.root / "data" / "blobs"
    (blobs / "sub").mkdir(parents=True)
    payload = {f"f{i}.bin": os.urandom(50_000 + i) for i in range(5)}
    for name, data in payload.items():
        (blobs / "sub" / name).write_bytes(data)
    before_local, before_vol = tree(node.root), tree(volume)
    proc = node.run("fractfs.init()", check=False)
    assert proc.returncode != 0 and "ClobberError" in proc.stderr and "data/blobs" in proc.stderr
    assert "force=True" in proc.stderr
    assert tree(node.root) == before_local and tree(volume) == before_vol  # nothing touched
    assert not (node.root / "exports").exists()  # not even the other [dirs] entry
    out = node.run("st = fractfs.init(force=True); print(json.dumps(st['dirs'])); fractfs.shutdown()")
    assert out["data/blobs"]["linked"] is True
    for name, data in payload.items():
        assert (volume / "data/blobs/sub" / name).read_bytes() == data
        assert (blobs / "sub" / name).read_bytes() == data  # readable through the link


def test_relink_when_pointing_elsewhere(tmp_path: Path, volume: Path) -> None:
    node = Node(tmp_path, volume)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (node.root / "data").mkdir()
    (node.root / "data" / "blobs").symlink_to(elsewhere)
    node.run("fractfs.init(); fractfs.shutdown(); print('[]')")
    assert Path(os.readlink(node.root / "data/blobs")) == volume / "data/blobs"


def test_pins_or_symlink_warning(tmp_path: Path, volume: Path) -> None:
    node = Node(tmp_path, volume)
    st = node.run("""
        st = fractfs.init()
        open("data/blobs/manifest.json", "w").write('{"v": 1}')
        os.makedirs("data/blobs/.locks", exist_ok=True)
        open("data/blobs/.locks/l1", "w").write("lock")
        print(json.dumps(fractfs.status()))
        fractfs.shutdown()
    """)
    caps = st["provision"]["capabilities"]
    if caps["symlinks"]:
        # pinned: the first write already landed on node-local scratch, not on the Volume
        assert (node.scratch / "data/blobs/manifest.json").read_text() == '{"v": 1}'
        assert (volume / "data/blobs/manifest.json").is_symlink()
        assert (node.scratch / "data/blobs/.locks/l1").exists()
        assert not any("symlink" in w and "pin" in w for w in st["warnings"])
        # [local] pins are checkpointed: a cold node gets manifest.json back in scratch
        node.wipe()
        out = node.run(
            "fractfs.init(); print(json.dumps([open('data/blobs/manifest.json').read()])); fractfs.shutdown()"
        )
        assert out == ['{"v": 1}']
    else:
        # FUSE: no symlinks; the app still runs, the pins that cannot be honoured are named
        msgs = [w for w in st["warnings"] if "symlink" in w]
        assert msgs and any("manifest.json" in w for w in msgs)
        assert (volume / "data/blobs/manifest.json").read_text() == '{"v": 1}'


def test_bad_config_changes_nothing(tmp_path: Path, volume: Path) -> None:
    node = Node(tmp_path, volume, config='[dirs]\npaths = ["data", "../escape"]\n')
    before = tree(node.root)
    proc = node.run("fractfs.init()", check=False)
    assert proc.returncode != 0 and "ConfigError" in proc.stderr
    assert ".fractfs.toml" in proc.stderr and "[dirs].paths[1]" in proc.stderr
    assert tree(node.root) == before and not (node.root / "data").exists()
    assert not node.scratch.exists() and not (volume / "data").exists()


def test_resolve_public(tmp_path: Path, volume: Path) -> None:
    node = Node(tmp_path, volume)
    out = node.run("""
        fractfs.init(start_daemon=False)
        r = fractfs.resolve
        print(json.dumps([r("data/blobs/x.parquet").value, r("data/blobs/manifest.json").value,
                          r(os.path.abspath("x.tmp")).value, r("notes.txt").value, r("exports").value,
                          isinstance(r("a"), fractfs.Tier)]))
        fractfs.shutdown(final_sync=False)
    """)
    assert out == ["dirs", "local", "ignore", "default", "dirs", True]


def test_sync_now_before_init_is_clear(tmp_path: Path) -> None:
    node = Node(tmp_path, tmp_path / "v")
    proc = node.run("fractfs.sync_now()", check=False)
    assert proc.returncode != 0 and "call fractfs.init() first" in proc.stderr


def test_readme_demo_runs() -> None:
    """The README's first command: the demo must pass on a machine with no cloud account."""
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
    proc = run_py(demo.read_text().replace('if __name__ == "__main__":', "if True:"), timeout=180)
    assert "demo OK" in proc.stdout


def test_unmounted_volume_is_refused(tmp_path: Path) -> None:
    """A missing Volume directory must not silently become local disk (no restore from 'empty', no writes)."""
    node = Node(tmp_path, tmp_path / "not-mounted")
    proc = node.run("fractfs.init()", check=False)
    # VolumeNotMounted is a ProvisionError (what init() raised for it before the type existed)
    assert proc.returncode != 0 and "VolumeNotMounted" in proc.stderr and "not-mounted" in proc.stderr
    assert not (tmp_path / "not-mounted").exists()


def test_the_checkpoint_engine_is_imported_after_init_not_by_a_later_checkpoint(tmp_path: Path, volume: Path) -> None:
    """init() leaves the engine to a thread of its own (a cold start does not wait for the import), which
    imports it at once: with sync_interval = 0 the first checkpoint is the one at SIGTERM, which must not
    import modules while the interrupted main thread may hold an import lock."""
    node = Node(tmp_path, volume)
    out = node.run("""
        import sys, threading
        fractfs.init()
        for t in threading.enumerate():
            if t.name == "fractfs-import":
                t.join(30)
        print(json.dumps({"engine": "fractfs.snapshot.engine" in sys.modules, "syncs": fractfs.status()["syncs"]}))
        fractfs.shutdown(final_sync=False)
    """, fractfs_SYNC_INTERVAL="0")
    assert out == {"engine": True, "syncs": 0}


def test_a_fork_right_after_init_waits_for_the_engine_import(tmp_path: Path, volume: Path) -> None:
    """Web servers fork right after start-up, while init()'s import thread may still import the engine. A
    child forked then would hold that thread's import locks without the thread, and its own first import of
    one of those modules would hang; so a fork waits for the thread. Here a one-second module stands in for
    the engine's import chain, and the child imports it too."""
    (tmp_path / "slowmod.py").write_text("import time\ntime.sleep(1.0)\n")
    node = Node(tmp_path, volume)
    out = node.run(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import fractfs.runtime

        def slow_import():
            import slowmod  # noqa: F401

        fractfs.runtime._import_engine = slow_import
        fractfs.init()
        pid = os.fork()
        if pid == 0:
            import signal
            signal.alarm(10)  # a hang ends as SIGALRM
            import slowmod  # noqa: F401
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({{"child": os.waitstatus_to_exitcode(status)}}))
        fractfs.shutdown(final_sync=False)
    """)
    assert out == {"child": 0}

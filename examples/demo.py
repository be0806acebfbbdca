"""fractfs demo: one app, two "nodes", a wiped disk in between — no cloud account needed.

A plain local directory plays the durable Volume. Node 1 starts the app, writes state of every tier and stops
(SIGTERM-style shutdown with a final checkpoint). Then the node's disk is wiped (app root and scratch deleted),
the platform re-deploys the bundle, and node 2 starts: ``fractfs.init()`` restores the state before the app
reads anything.

    python examples/demo.py            # uses a fresh temporary directory
    python examples/demo.py --keep DIR # leaves everything in DIR to look at
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CONFIG = """\
[dirs]
paths = ["data/blobs"]          # big files: straight onto the Volume

[local]
patterns = ["manifest.json", "*.sqlite"]   # small hot state: node-local, checkpointed

[ignore]
patterns = ["*.tmp", ".locks/"]  # never saved
"""

APP_NODE1 = textwrap.dedent("""
    import json, sqlite3, fractfs
    st = fractfs.init()
    open("data/blobs/big.bin", "wb").write(b"x" * 5_000_000)             # [dirs]: lands on the Volume
    open("data/blobs/manifest.json", "w").write('{"rows": 3}')            # [local] pin inside [dirs]
    db = sqlite3.connect("state.sqlite"); db.execute("create table t(x)")  # [local]
    db.executemany("insert into t values (?)", [(1,), (2,), (3,)]); db.commit(); db.close()
    open("notes.txt", "w").write("written on node 1")                      # default tier
    open("scratch.tmp", "w").write("throwaway")                            # [ignore]
    stored = fractfs.sync_now()
    print(json.dumps({"stored": sorted(stored), "warnings": st["warnings"]}))
    fractfs.shutdown()
""")

APP_NODE2 = textwrap.dedent("""
    import json, os, sqlite3, fractfs
    st = fractfs.init()
    rows = sqlite3.connect("state.sqlite").execute("select count(*) from t").fetchone()[0]
    print(json.dumps({
        "notes.txt": open("notes.txt").read(),
        "state.sqlite rows": rows,
        "data/blobs/manifest.json": open("data/blobs/manifest.json").read(),
        "data/blobs/big.bin bytes": os.path.getsize("data/blobs/big.bin"),
        "scratch.tmp exists": os.path.exists("scratch.tmp"),
        "restored files": st["restore"]["restored"],
        "bundle files ignored": st["bundle_file_count"],
        "tier of data/blobs/big.bin": fractfs.resolve("data/blobs/big.bin").value,
        "tier of notes.txt": fractfs.resolve("notes.txt").value,
    }, indent=2))
    fractfs.shutdown()
""")


def deploy(app: Path) -> None:
    """What the platform does on every cold start: lay the bundle down on an empty disk."""
    app.mkdir(parents=True, exist_ok=True)
    (app / ".fractfs.toml").write_text(CONFIG)
    (app / "app.py").write_text("# the deployed application code\n")


def run_node(name: str, code: str, app: Path, env: dict[str, str]) -> dict[str, object]:
    print(f"--- {name}: python -c <app code> in {app}")
    proc = subprocess.run([sys.executable, "-c", code], cwd=app, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    result: dict[str, object] = json.loads(proc.stdout)
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and leave it in place")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fractfs-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    app, volume, scratch = base / "app", base / "volume", base / "scratch"
    volume.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("fractfs_")}
    env.update({"fractfs_BACKEND": "local", "fractfs_VOLUME_ROOT": str(volume),
                "fractfs_SCRATCH": str(scratch), "fractfs_SYNC_INTERVAL": "300"})
    try:
        deploy(app)
        run_node("node 1", APP_NODE1, app, env)
        print("--- node lost: wiping the local disk (app root and scratch); the Volume survives")
        shutil.rmtree(app)
        shutil.rmtree(scratch, ignore_errors=True)
        deploy(app)
        out = run_node("node 2 (cold start)", APP_NODE2, app, env)
        ok = (out["notes.txt"] == "written on node 1" and out["state.sqlite rows"] == 3
              and out["scratch.tmp exists"] is False and out["data/blobs/big.bin bytes"] == 5_000_000)
        print("--- demo", "OK: state survived the wipe, ignored file did not" if ok else "FAILED")
        if not ok:
            raise SystemExit(1)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

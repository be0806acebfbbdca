"""Finding snapshots and reading manifest entries: the cases the mutation run of catalog.py and format.py
showed no test would notice (tools/mutation.py, docs/reliability.md §8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_snapshot_support import everything, make_store, write

from fractfs.errors import CorruptCheckpointError
from fractfs.snapshot import catalog, checkpoint
from fractfs.snapshot.format import BadEntry, SnapName, entry_from_json, parse_snapshot_id
from fractfs.stores import PosixStore


def test_resolve_id_by_full_id_sequence_or_prefix_of_four_or_more() -> None:
    a, b = SnapName(1, "abcd" + "0" * 60), SnapName(2, "abce" + "1" * 60)
    names = [a, b]
    assert catalog.resolve_id(names, a.id) == a and catalog.resolve_id(names, "2") == b
    assert catalog.resolve_id(names, "ABCE") == b
    with pytest.raises(CorruptCheckpointError, match="not found"):
        catalog.resolve_id(names, "abc")  # 3 characters are too short to be taken as a prefix
    with pytest.raises(CorruptCheckpointError, match="not found"):
        catalog.resolve_id(names, "ffff")
    with pytest.raises(CorruptCheckpointError, match="ambiguous: 1-abcd"):
        catalog.resolve_id([a, SnapName(3, "abcd" + "2" * 60)], "abcd")


def test_a_manifest_damaged_in_transit_is_read_again(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    write(tmp_path / "app", "f", "content")
    res = checkpoint(store, {"root": tmp_path / "app"}, everything, state_dir=tmp_path / "state")
    name = parse_snapshot_id(res.snapshot_id or "")
    assert name is not None

    class FlipOnce(PosixStore):
        flipped = False

        def get(self, key: str) -> bytes:
            data = super().get(key)
            if key == name.key and not FlipOnce.flipped:
                FlipOnce.flipped = True
                return data[:30] + bytes([data[30] ^ 1]) + data[31:]
            return data

    m = catalog.load(FlipOnce(store.root), name)  # the second read has the stored, intact bytes
    assert m.id == res.snapshot_id and FlipOnce.flipped


def _entry(**kw: Any) -> dict[str, Any]:
    d = {"area": "root", "path": "a", "type": "file", "mode": 0o644, "size": 0, "mtime_ns": 1,
         "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}
    d.update(kw)
    return d


@pytest.mark.parametrize("bad", [
    {"path": 123}, {"path": ""}, {"path": None},
    {"mode": True}, {"mode": -1}, {"mode": 0o10000}, {"size": "0"}, {"mtime_ns": False},
])
def test_malformed_entries_are_refused(bad: dict[str, Any]) -> None:
    assert entry_from_json(_entry()).path == "a"
    with pytest.raises(BadEntry):
        entry_from_json(_entry(**bad))


def test_non_ascii_names_round_trip(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    write(tmp_path / "app", "données/é.txt", "ü")
    res = checkpoint(store, {"root": tmp_path / "app"}, everything, state_dir=tmp_path / "state")
    assert res.stored == ["root:données/é.txt"]
    m, damaged = catalog.newest_valid(store)
    assert m is not None and damaged == [] and ("root", "données/é.txt") in m.paths()


def test_manifest_inflation_is_bounded_while_it_happens(tmp_path: Path) -> None:
    """A 200 MiB "gzip bomb" under a valid name is refused without ever being inflated whole (the bound is
    max(64 MiB, 100 x its stored size)): the process reading it stays far below 200 MiB."""
    import hashlib
    import subprocess
    import sys
    import zlib

    from helpers import SRC

    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    bomb = b"".join(c.compress(chunk) for _ in range(200)) + c.flush()
    path = tmp_path / "bomb"
    path.write_bytes(bomb)
    name = SnapName(1, hashlib.sha256(bomb).hexdigest())
    code = f"""
import resource, sys
from fractfs.errors import CorruptCheckpointError
from fractfs.snapshot.format import SnapName, decode_manifest
data = open({str(path)!r}, "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_manifest(SnapName(1, {name.digest!r}), data)
    print("accepted")
except CorruptCheckpointError as exc:
    print("refused", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out[0] == "refused" and int(out[1]) < 120, out  # MiB of peak memory added while decoding

"""fractfs.localfile: all-at-once replacement, removal that tolerates absence, and the one file hash."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fractfs.localfile import hash_file, unlink_if_present, write_replace


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 7])
def test_hash_file_is_sha256_and_size(tmp_path: Path, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    p = tmp_path / "f"
    p.write_bytes(data)
    assert hash_file(p) == (hashlib.sha256(data).hexdigest(), size)
    assert hash_file(str(p)) == hash_file(p)


def test_hash_file_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "nope")


def test_write_replace_and_unlink_if_present(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    write_replace(p, b"one", b"two", durable=True)
    assert p.read_bytes() == b"onetwo" and [x.name for x in tmp_path.iterdir()] == ["state.json"]
    unlink_if_present(p)
    unlink_if_present(p)  # already gone is fine
    assert not p.exists()

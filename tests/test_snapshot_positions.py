"""EntryPositions (snapshot/positions.py): an entry's position in its manifest, by identity, in any order."""
from __future__ import annotations

import random

import pytest

from fractfs.snapshot.format import DIR, FILE, Entry
from fractfs.snapshot.positions import EntryPositions


def _entries() -> list[Entry]:
    out = []
    for d in range(20):
        out.append(Entry("root", f"d{d:02d}", DIR, mode=0o755))
        out.extend(Entry("root", f"d{d:02d}/f{i}", FILE, sha256="e" * 64) for i in range(10))
    out.extend(Entry("z.area", f"f{i}", FILE, sha256="e" * 64) for i in range(5))
    return out


@pytest.mark.parametrize("shuffled", [False, True], ids=["sorted", "any order"])
def test_every_entry_is_found_whatever_the_order_of_the_manifest_and_of_the_questions(shuffled: bool) -> None:
    entries = _entries()
    rng = random.Random(13)
    if shuffled:  # a manifest fractfs did not write
        rng.shuffle(entries)
    pos = EntryPositions(entries)
    assert [pos.of(e) for e in entries] == list(range(len(entries)))  # in order, as files are mostly written
    asked = list(range(len(entries)))
    rng.shuffle(asked)
    assert [pos.of(entries[i]) for i in asked] == asked


def test_an_equal_entry_that_is_not_the_manifests_own_is_not_found() -> None:
    """Positions are by identity: an equal copy (from another manifest) must not be taken for the entry."""
    entries = _entries()
    pos = EntryPositions(entries)
    copy = Entry(*entries[7])
    assert copy == entries[7] and copy is not entries[7]
    with pytest.raises(LookupError, match="root:d00/f6"):
        pos.of(copy)
    with pytest.raises(LookupError):
        pos.of(Entry("root", "missing", FILE))
    assert pos.of(entries[7]) == 7

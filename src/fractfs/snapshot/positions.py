"""Where an entry sits in its manifest's list of entries, found without a dict from every entry to its position.

A restore notes what it learned of each file it wrote (stat facts, whether it is in place) by the entry's
position in ``Manifest.entries``, in flat arrays, instead of in dicts keyed by Entry: at a million files such a
dict and the tuples it points at cost a quarter of a GiB. The writers only hold the Entry objects, so their
positions are found here: a manifest fractfs wrote lists its entries sorted by (area, path), which is also how
Entry tuples compare, so a binary search finds any entry, and files are mostly written in that very order, so
the position after the last one found is tried first. For a manifest in any other order (not written by
fractfs) a dict from object id to position is built once, on the first miss.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Optional

from .format import Entry


class EntryPositions:
    """Positions of the very Entry objects of ``entries`` (identity, not equality). Safe to share between
    threads: a stale guess only costs a binary search, and the fallback dict is complete whoever builds it."""

    def __init__(self, entries: Sequence[Entry]):
        self.entries = entries
        self._next = 0
        self._by_id: Optional[dict[int, int]] = None

    def __len__(self) -> int:
        return len(self.entries)

    def of(self, e: Entry) -> int:
        """The position of ``e``; LookupError if it is not one of the entries (a bug in the caller)."""
        entries = self.entries
        i = self._next
        if i < len(entries) and entries[i] is e:
            self._next = i + 1
            return i
        try:
            i = bisect_left(entries, e)
        except TypeError:  # entries out of order may compare fields of types that do not order
            i = len(entries)
        if i < len(entries) and entries[i] is e:
            self._next = i + 1
            return i
        by_id = self._by_id
        if by_id is None:
            by_id = self._by_id = {id(x): k for k, x in enumerate(entries)}
        k = by_id.get(id(e))
        if k is None or entries[k] is not e:
            raise LookupError(f"{e.label} is not an entry of this manifest")
        self._next = k + 1
        return k

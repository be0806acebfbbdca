"""How a checkpoint runs (:class:`Options`), apart from the engine that runs it.

Its own module so that starting fractfs (``init()`` builds the options of its checkpointer) does not import the
checkpoint engine, its capture and chunker and their dependencies: about 20 ms of a cold start, for code the
first checkpoint needs only after ``init()`` has returned.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Files at least this big are chunked while they are read (streamed into packs); smaller ones are read into
#: memory on the reader threads and chunked there.
LARGE_FILE = 8 << 20
#: Bytes of file data per pack, about (see packer.py).
PACK_SIZE = 16 << 20


@dataclass(frozen=True)
class Options:
    """How to checkpoint (see :func:`.engine.checkpoint` for each)."""

    content_hash: bool = False
    node_id: str = ""
    transfers: int = 16
    keep: int = 10
    pack_size: int = PACK_SIZE
    deadline: float | None = None
    large_file: int = LARGE_FILE

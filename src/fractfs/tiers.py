"""The one resolver: relative path → :class:`Tier`.

Precedence is ignore > local > dirs > default. ``[local]``/``[ignore]`` patterns follow gitignore semantics,
matched against the path relative to the app root by :mod:`fractfs.patterns` (git's own parsing, matching and
directory rules); this module only orders the tables and the ``[dirs]`` entries.
"""
from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass
from typing import Optional

from .config import Config
from .patterns import PatternList


class Tier(str, enum.Enum):
    DIRS = "dirs"        #: lives on the Volume through a directory symlink; durable, not checkpointed
    LOCAL = "local"      #: node-local, checkpointed (pinned to scratch when inside a [dirs] dir)
    IGNORE = "ignore"    #: node-local, never checkpointed
    DEFAULT = "default"  #: node-local, checkpointed

    def __str__(self) -> str:
        return self.value

    @property
    def checkpointed(self) -> bool:
        return self in (Tier.LOCAL, Tier.DEFAULT)


@dataclass(frozen=True)
class Decision:
    """Why a path got its tier: the table (``ignore``/``local``/``dirs``) and the rule that decided it."""

    path: str
    tier: Tier
    table: Optional[str]    #: "ignore", "local", "dirs" or None for the default tier
    rule: Optional[str]     #: the pattern or [dirs] path that decided it
    matched_as: Optional[str] = None  #: the ancestor directory that matched, when a directory rule decided

    def as_dict(self) -> dict[str, Optional[str]]:
        return {"path": self.path, "tier": self.tier.value, "table": self.table, "rule": self.rule,
                "matched_as": self.matched_as}


def normalize_relpath(path: str) -> str:
    """'./a//b/' → 'a/b'. Does not resolve '..' (callers reject it where it matters)."""
    norm = posixpath.normpath(path)
    return "" if norm == "." else norm


class TierResolver:
    """Classifies app-relative paths. Build once per Config; cheap to query."""

    def __init__(self, config: Config):
        self.config = config
        self.dirs: tuple[str, ...] = tuple(config.dirs)
        self._ignore = PatternList("ignore", config.ignore_patterns)
        self._local = PatternList("local", config.local_patterns)

    def dir_of(self, relpath: str) -> Optional[str]:
        """The [dirs] entry that contains (or equals) ``relpath``, if any."""
        for d in self.dirs:
            if relpath == d or relpath.startswith(d + "/"):
                return d
        return None

    def explain(self, relpath: str, is_dir: bool = False) -> Decision:
        relpath = normalize_relpath(relpath)
        for table, tier in ((self._ignore, Tier.IGNORE), (self._local, Tier.LOCAL)):
            rule, ancestor = table.match(relpath, is_dir)
            if rule is not None:
                return Decision(relpath, tier, table.name, rule, ancestor)
        d = self.dir_of(relpath)
        if d is not None:
            return Decision(relpath, Tier.DIRS, "dirs", d)
        return Decision(relpath, Tier.DEFAULT, None, None)

    def resolve(self, relpath: str, is_dir: bool = False) -> Tier:
        return self.explain(relpath, is_dir).tier

    def is_ignored(self, relpath: str, is_dir: bool = False) -> bool:
        return self._ignore.match(relpath, is_dir)[0] is not None

    def is_local(self, relpath: str, is_dir: bool = False) -> bool:
        return self._local.match(relpath, is_dir)[0] is not None

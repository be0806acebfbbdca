"""The gitignore engine: one pattern line parsed and matched as git does, and an ordered list of them.

Patterns are translated here, following git's ``dir.c`` (parsing) and ``wildmatch.c`` (matching), rather than
through a general gitignore library: the tests compare every decision with ``git check-ignore`` on generated
patterns, and the library's own precedence rules answered differently for directories (``a/**`` matched ``a``
itself; ``!**`` before ``a`` kept ``a`` included) and it read some bracket expressions differently. Matching is
on UTF-8 bytes, as in git (``?`` is one byte).

A :class:`PatternList` is evaluated the way git evaluates a ``.gitignore`` at the top of a work tree: for every
leading directory of a path, the last pattern that matches that directory decides; an excluded directory
excludes everything below it (git never descends into it, so a later ``!`` cannot re-include a child);
otherwise the last pattern matching the path itself decides.

Everything that reads a ``[local]``/``[ignore]`` line goes through :class:`GitPattern`: the config (refusing
dead patterns), the tier resolver and the pin planner, so they cannot disagree on what a line means.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

__all__ = ["GitPattern", "PatternList", "is_rule", "unusable_pattern"]

_POSIX_CLASSES = {
    "alnum": b"a-zA-Z0-9", "alpha": b"a-zA-Z", "blank": b" \\t", "cntrl": b"\\x00-\\x1f\\x7f",
    "digit": b"0-9", "graph": b"!-~", "lower": b"a-z", "print": b" -~",
    "punct": b"!-/:-@\\[-`{-~", "space": b" \\t\\n\\r\\x0b\\x0c", "upper": b"A-Z",
    "xdigit": b"0-9A-Fa-f",
}


def _esc(c: int) -> bytes:
    return re.escape(bytes([c]))


def _bracket(p: bytes, i: int) -> Optional[tuple[bytes, int]]:
    """Translate the bracket expression at ``p[i] == '['``: (regex, index after it), or None when git's
    wildmatch would abort (unterminated, or an unknown ``[:class:]``), i.e. the pattern matches nothing."""
    n = len(p)
    j = i + 1
    negated = j < n and p[j] in b"!^"
    if negated:
        j += 1
    items: list[bytes] = []
    prev: Optional[int] = None  # the previous literal, which a following '-' makes the start of a range
    first = True
    while True:
        if j >= n:
            return None
        c = p[j]
        if c == 0x5D and not first:  # ']' closes, except as the very first member
            break
        first = False
        if c == 0x5C:  # '\' escapes the next byte
            j += 1
            if j >= n:
                return None
            items.append(_esc(p[j]))
            prev = p[j]
        elif c == 0x2D and prev is not None and j + 1 < n and p[j + 1] != 0x5D:  # a range prev-hi
            j += 1
            hi = p[j]
            if hi == 0x5C:
                j += 1
                if j >= n:
                    return None
                hi = p[j]
            if prev <= hi:
                items.append(_esc(prev) + b"-" + _esc(hi))
            prev = None
        elif c == 0x5B and j + 1 < n and p[j + 1] == 0x3A:  # '[:' may open a character class
            k = j + 2
            while k < n and p[k] != 0x5D:
                k += 1
            if k >= n:
                return None
            if k - 1 < j + 2 or p[k - 1] != 0x3A:
                items.append(_esc(c))  # no ':]': a literal '[', and go on after it
                prev = c
            else:
                cls = _POSIX_CLASSES.get(p[j + 2:k - 1].decode("ascii", "replace"))
                if cls is None:
                    return None
                items.append(cls)
                prev = None
                j = k
        else:
            items.append(_esc(c))
            prev = c
        j += 1
    # with WM_PATHNAME a bracket expression never matches '/'
    return b"(?!/)[" + (b"^" if negated else b"") + b"".join(items) + b"]", j + 1


def _wildmatch(p: bytes) -> Optional[bytes]:
    """Regex for git's ``wildmatch(p, path, WM_PATHNAME)``; None if the pattern can never match."""
    out: list[bytes] = []
    n = len(p)
    i = 0
    while i < n:
        c = p[i]
        if c == 0x2A:  # '*'
            j = i
            while j < n and p[j] == 0x2A:
                j += 1
            bounded_before = i == 0 or p[i - 1] == 0x2F
            if j - i >= 2 and bounded_before and (j == n or p[j] == 0x2F or p[j:j + 2] == b"\\/"):
                if j == n:
                    out.append(b".*")                  # trailing "**": everything inside
                else:
                    out.append(b"(?:.*/)?")            # "**/": zero or more directories
                    j += 1 if p[j] == 0x2F else 2
            else:
                out.append(b"[^/]*")
            i = j
        elif c == 0x3F:  # '?'
            out.append(b"[^/]")
            i += 1
        elif c == 0x5B:  # '['
            got = _bracket(p, i)
            if got is None:
                return None
            out.append(got[0])
            i = got[1]
        elif c == 0x5C:  # '\'
            if i + 1 >= n:
                return None  # a trailing backslash matches nothing
            out.append(_esc(p[i + 1]))
            i += 2
        else:
            out.append(_esc(c))
            i += 1
    return b"".join(out)


def _trim_trailing_spaces(p: str) -> str:
    """git's trim_trailing_spaces(): drop trailing spaces unless escaped with a backslash."""
    last_space: Optional[int] = None
    i = 0
    while i < len(p):
        ch = p[i]
        if ch == " ":
            if last_space is None:
                last_space = i
        elif ch == "\\":
            i += 1
            if i >= len(p):
                return p
            last_space = None
        else:
            last_space = None
        i += 1
    return p[:last_space] if last_space is not None else p


class GitPattern:
    """One gitignore line, parsed as git's ``parse_path_pattern()`` does."""

    __slots__ = ("text", "negated", "dir_only", "anchored", "body", "regex")

    def __init__(self, text: str):
        self.text = text                 #: the line as written
        p = _trim_trailing_spaces(text)
        self.negated = p.startswith("!")
        if self.negated:
            p = p[1:]
        self.dir_only = p.endswith("/")
        if self.dir_only:
            p = p[:-1]
        # a '/' anywhere but at the end (even inside brackets) anchors the pattern to the root; without one
        # it matches the last component at any depth
        self.anchored = "/" in p
        if self.anchored and p.startswith("/"):
            p = p[1:]
        #: the pattern proper: no "!", no leading "/", no trailing "/", escapes still in place
        self.body = p
        regex = _wildmatch(p.encode("utf-8", "surrogateescape")) if p else None
        # an unanchored pattern is matched against the last component only (what git does, and cheaper)
        self.regex: Optional[re.Pattern[bytes]] = (
            re.compile(regex + b"\\Z", re.DOTALL) if regex is not None else None)

    @property
    def literal(self) -> Optional[str]:
        """The one path (or name, when unanchored) this pattern matches, escapes resolved; None for a glob.

        ``sp\\ ace`` is the literal ``sp ace`` and ``\\#a`` is ``#a``: a backslash only protects the next
        character. A pattern with an unescaped ``*``, ``?`` or ``[`` (or one that matches nothing) has none.
        """
        if self.regex is None:
            return None
        out: list[str] = []
        i = 0
        while i < len(self.body):
            ch = self.body[i]
            if ch in "*?[":
                return None
            if ch == "\\":
                i += 1  # never past the end: a trailing backslash leaves no regex, handled above
            out.append(self.body[i])
            i += 1
        return "".join(out)

    def matches(self, path: bytes, is_dir: bool) -> bool:
        if self.regex is None or (self.dir_only and not is_dir):
            return False
        return self.regex.match(path if self.anchored else path[path.rfind(b"/") + 1:]) is not None


def is_rule(line: str) -> bool:
    """False for what git skips in a .gitignore: a comment (``#`` first) or a line blank after trimming."""
    return not line.startswith("#") and bool(_trim_trailing_spaces(line).strip())


def unusable_pattern(text: str) -> Optional[str]:
    """Why ``text`` can never match anything (git keeps such a line, but it is dead); None if it is usable.

    Config validation refuses such patterns: a rule that silently never applies is a mistake to report.
    """
    if not is_rule(text):
        return "it is blank or a comment"
    g = GitPattern(text)
    if g.regex is not None:
        return None
    p = _trim_trailing_spaces(text)
    body = p[1:] if p.startswith("!") else p
    if body.rstrip("/") in ("", "/"):
        return "it names no path"
    if body.endswith("\\") and not body.endswith("\\\\"):
        return "it ends in a lone backslash (escape it as '\\\\' to match a backslash)"
    return "it has an unterminated '[' or an unknown '[:class:]' (escape a literal '[' as '\\[')"


class PatternList:
    """One gitignore pattern list, answering 'which pattern decided this path, if any'."""

    #: decisions for directories are reused by every path below them; bounded so a huge walk cannot grow it
    _CACHE_MAX = 65536

    def __init__(self, name: str, patterns: Sequence[str]):
        self.name = name
        # comments and blank lines carry no rule
        self.patterns = tuple(p for p in patterns if is_rule(p))
        self._compiled = tuple(GitPattern(p) for p in self.patterns)
        # (match, dir_only, anchored, pattern), newest first: git's "last matching pattern wins"
        self._rules = tuple((g.regex.match, g.dir_only, g.anchored, g) for g in reversed(self._compiled)
                            if g.regex is not None)
        self._dirs: dict[str, tuple[Optional[str], Optional[str]]] = {}

    def _last(self, path: str, is_dir: bool) -> Optional[GitPattern]:
        """The last pattern matching ``path`` itself (git: last match wins), or None."""
        raw = path.encode("utf-8", "surrogateescape")
        base = raw[raw.rfind(b"/") + 1:]
        for match, dir_only, anchored, g in self._rules:
            if (is_dir or not dir_only) and match(raw if anchored else base) is not None:
                return g
        return None

    def _dir(self, ancestor: str) -> tuple[Optional[str], Optional[str]]:
        """(pattern, directory) that excludes ``ancestor`` or one of its parents, else (None, None)."""
        hit = self._dirs.get(ancestor)
        if hit is not None:
            return hit
        parent = ancestor.rpartition("/")[0]
        out: tuple[Optional[str], Optional[str]] = self._dir(parent) if parent else (None, None)
        if out[0] is None:
            g = self._last(ancestor, True)
            if g is not None and not g.negated:
                out = (g.text, ancestor + "/")
        if len(self._dirs) >= self._CACHE_MAX:
            self._dirs.clear()
        self._dirs[ancestor] = out
        return out

    def match(self, relpath: str, is_dir: bool) -> tuple[Optional[str], Optional[str]]:
        """(pattern, matched ancestor) — git semantics: the first excluded ancestor directory wins."""
        if not self.patterns or not relpath:
            return None, None
        parent = relpath.rpartition("/")[0]
        if parent:
            hit = self._dir(parent)
            if hit[0] is not None:
                return hit
        g = self._last(relpath, is_dir)
        if g is None or g.negated:
            return None, None
        return g.text, None

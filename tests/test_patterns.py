"""The gitignore engine on its own: how one line is parsed, what it matches, and how a list decides.

The resolver built on it is compared with ``git check-ignore`` in test_tiers.py and
test_reliability_gitignore.py; here each piece is pinned down directly, including what the pin planner reads
(``body``, ``literal``) and what the config refuses (``unusable_pattern``).
"""

from __future__ import annotations

import pytest

from fractfs.patterns import GitPattern, PatternList, is_rule, unusable_pattern


@pytest.mark.parametrize(
    "line,negated,dir_only,anchored,body",
    [
        ("manifest.json", False, False, False, "manifest.json"),
        ("!keep.log", True, False, False, "keep.log"),
        (".locks/", False, True, False, ".locks"),
        ("/top.txt", False, False, True, "top.txt"),
        ("data/blobs/cache/", False, True, True, "data/blobs/cache"),
        ("!/a/b/", True, True, True, "a/b"),
        ("index.sqlite  ", False, False, False, "index.sqlite"),   # trailing spaces are dropped
        ("sp\\ ", False, False, False, "sp\\ "),                    # ... unless the last one is escaped
        ("tab\t", False, False, False, "tab\t"),                   # git trims spaces only, never tabs
        ("\\!bang", False, False, False, "\\!bang"),               # an escaped '!' does not negate
    ],
)
def test_parse(line: str, negated: bool, dir_only: bool, anchored: bool, body: str) -> None:
    g = GitPattern(line)
    assert (g.text, g.negated, g.dir_only, g.anchored, g.body) == (line, negated, dir_only, anchored, body)


@pytest.mark.parametrize(
    "line,literal",
    [
        ("manifest.json", "manifest.json"),
        ("sp\\ ace", "sp ace"),
        ("trail\\ ", "trail "),
        ("\\#hash", "#hash"),
        ("\\!bang", "!bang"),
        ("back\\\\slash", "back\\slash"),
        ("lit\\*star", "lit*star"),
        ("/data/blobs/manifest.json", "data/blobs/manifest.json"),
        (".locks/", ".locks"),
        ("*.tmp", None),
        ("a?", None),
        ("[ab]x", None),
        ("docs/**/x", None),
        ("[unterminated", None),   # matches nothing, so it names no path either
    ],
)
def test_literal(line: str, literal: str | None) -> None:
    g = GitPattern(line)
    assert g.literal == literal
    if literal is not None:
        # the literal is exactly what the pattern matches (as a path or, unanchored, as a name)
        name = literal.encode()
        assert g.matches(name, is_dir=True)
        assert not g.matches(name + b"x", is_dir=True)


def test_matching_is_per_component_and_on_bytes() -> None:
    assert GitPattern("*.log").matches(b"deep/dir/x.log", False)
    assert not GitPattern("*.log").matches(b"x.log/inner", False)
    assert GitPattern("/top").matches(b"top", False) and not GitPattern("/top").matches(b"a/top", False)
    assert GitPattern("a/**/b").matches(b"a/b", False) and GitPattern("a/**/b").matches(b"a/x/y/b", False)
    assert not GitPattern("a?").matches(b"a/", False)                      # '?' never matches '/'
    assert GitPattern("?").matches("é".encode()[:1], False)                 # '?' is one byte, as in git
    assert not GitPattern("?").matches("é".encode(), False)
    assert GitPattern("cache/").matches(b"cache", True) and not GitPattern("cache/").matches(b"cache", False)
    assert GitPattern("[[:digit:]]x").matches(b"1x", False) and not GitPattern("[[:digit:]]x").matches(b"ax", False)


@pytest.mark.parametrize(
    "line,rule",
    [("# comment", False), ("", False), ("   ", False), ("\\#not-a-comment", True), (" #lead", True),
     ("a", True), ("!a", True)],
)
def test_is_rule(line: str, rule: bool) -> None:
    assert is_rule(line) is rule


@pytest.mark.parametrize(
    "line,why",
    [
        ("", "blank or a comment"),
        ("# x", "blank or a comment"),
        ("/", "names no path"),
        ("!/", "names no path"),
        ("a\\", "lone backslash"),
        ("[ab", "unterminated"),
        ("[[:nope:]]", "unknown"),
    ],
)
def test_unusable_pattern(line: str, why: str) -> None:
    reason = unusable_pattern(line)
    assert reason is not None and why in reason


@pytest.mark.parametrize("line", ["a", "!a", "*.tmp", ".locks/", "a\\\\", "[a]", "/x/y"])
def test_usable_pattern(line: str) -> None:
    assert unusable_pattern(line) is None


def test_last_matching_pattern_wins() -> None:
    table = PatternList("ignore", ["*.log", "!keep.log"])
    assert table.match("x.log", False) == ("*.log", None)
    assert table.match("keep.log", False) == (None, None)
    table = PatternList("ignore", ["!keep.log", "*.log"])
    assert table.match("keep.log", False) == ("*.log", None)


def test_an_excluded_directory_excludes_everything_below_it() -> None:
    table = PatternList("ignore", ["build/", "!build/keep"])
    # git never looks inside build/, so the later '!' cannot bring build/keep back
    assert table.match("build/keep", False) == ("build/", "build/")
    assert table.match("src/build/deep/x", False) == ("build/", "src/build/")
    assert table.match("build", False) == (None, None)   # 'build/' names directories only
    assert table.match("build", True) == ("build/", None)


def test_comments_and_blank_lines_carry_no_rule() -> None:
    table = PatternList("local", ["# c", "", "  ", "a"])
    assert table.patterns == ("a",)
    assert PatternList("local", ["# only"]).match("# only", False) == (None, None)
    assert PatternList("local", ["\\# only"]).match("# only", False) == ("\\# only", None)


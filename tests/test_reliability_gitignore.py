"""The tier resolver against git itself: generated gitignore patterns and paths, every decision compared with
``git check-ignore --no-index`` on the same patterns, in a repository where the paths really exist (so git
knows which are directories).

Deliberate differences (docs/reliability.md): none in matching. Two things are outside the comparison:
paths whose first character is ``:`` (git reads them as pathspec magic and cannot be asked about them
literally), and patterns that can never match anything (an unterminated ``[``, a lone trailing backslash,
an unknown ``[:class:]``), which git silently keeps and fractfs refuses in ``.fractfs.toml`` instead — see
``test_dead_patterns_are_refused_by_the_config``.

``max_examples`` stays modest for CI; ``FRACTFS_HYPOTHESIS_EXAMPLES=5000`` runs the long version.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fractfs.config import Config, load_config
from fractfs.errors import ConfigError
from fractfs.patterns import unusable_pattern
from fractfs.tiers import Tier, TierResolver

EXAMPLES = int(os.environ.get("FRACTFS_HYPOTHESIS_EXAMPLES", "200"))

# Pattern pieces: plain names, every wildcard form, bracket expressions (negated, ranges, ']' first, classes,
# escapes, unterminated), escapes of the characters gitignore treats specially, trailing spaces, non-ASCII.
PATTERN_PIECES = [
    "a", "b", "ab", ".a", "a.b", "é", "*", "**", "***", "?", "a*", "*b", "a?", "?é", "[ab]", "[!a]", "[^a]",
    "[a-c]", "[]a]", "[!]]", "[a-]", "[-a]", "[\\]]", "[[:alpha:]]", "[[:digit:]x]", "[é]", "\\*", "\\!a",
    "\\#a", "#a", "a\\ ", "a ", "\\ ", "\\\\", "[[a]",
]
PATH_PIECES = ["a", "b", "ab", "ba", ".a", "a.b", "c", "*", "!a", "#a", "a ", "a b", "[", "]", "\\", "é",
               "éa", "1", "-", "a:"]


@st.composite
def patterns(draw: Any) -> str:
    parts = draw(st.lists(st.sampled_from(PATTERN_PIECES), min_size=1, max_size=3))
    text = "/".join(parts)
    if draw(st.booleans()) and draw(st.booleans()):
        text = "/" + text
    if draw(st.booleans()) and draw(st.booleans()):
        text += "/"
    if draw(st.booleans()) and draw(st.booleans()):
        text = "!" + text
    return text


paths = st.lists(st.sampled_from(PATH_PIECES), min_size=1, max_size=4).map("/".join)


def _resolver(ignore: list[str]) -> TierResolver:
    return TierResolver(Config(root=Path("/app"), config_file=None, backend="local", volume_root="/vol",
                               dirs_root=Path("/vol"), ignore_patterns=tuple(ignore)))


@pytest.fixture(scope="module")
def repo(git: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository for the oracle (the ``git`` fixture fails the run under CI=true without git)."""
    r = tmp_path_factory.mktemp("gitrepo")
    subprocess.run([git, "init", "-q", str(r)], check=True)
    subprocess.run([git, "-C", str(r), "config", "core.ignorecase", "false"], check=True)
    return r


def _git_ignored(repo: Path, pats: list[str], files: list[str], dirs: list[str]) -> set[str]:
    """Lay the paths out in ``repo`` and ask git, in one call, which are ignored."""
    for entry in os.listdir(repo):
        if entry != ".git":
            p = repo / entry
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for d in dirs:
        (repo / d).mkdir(parents=True, exist_ok=True)
    for f in files:
        (repo / f).write_bytes(b"x")
    (repo / ".gitignore").write_text("\n".join(pats) + "\n", encoding="utf-8")
    query = "\0".join(dirs + files) + "\0"
    proc = subprocess.run(["git", "-C", str(repo), "check-ignore", "--no-index", "--stdin", "-z"],
                          input=query.encode(), capture_output=True, check=False)
    assert proc.returncode in (0, 1), proc.stderr.decode()
    return {p for p in proc.stdout.decode().split("\0") if p}


@settings(max_examples=EXAMPLES, deadline=None, derandomize="FRACTFS_HYPOTHESIS_EXAMPLES" not in os.environ,
          database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pats=st.lists(patterns(), min_size=1, max_size=4), ps=st.lists(paths, min_size=1, max_size=8))
def test_resolver_agrees_with_git_check_ignore(repo: Path, pats: list[str], ps: list[str]) -> None:
    dirs = sorted({"/".join(p.split("/")[:i]) for p in ps for i in range(1, p.count("/") + 1)})
    files = sorted(set(ps) - set(dirs))
    git = _git_ignored(repo, pats, files, dirs)
    r = _resolver(pats)
    ours = {p for p in dirs if r.resolve(p, True) is Tier.IGNORE}
    ours |= {p for p in files if r.resolve(p, False) is Tier.IGNORE}
    assert ours == git, f"{pats}: only fractfs ignores {sorted(ours - git)}, only git {sorted(git - ours)}"


# Hand-picked cases that separated fractfs from git before the resolver followed git's own parser and
# matcher (a library's precedence rules and bracket parsing differed); kept as regression tests.
REGRESSIONS = [
    (["a/**"], ["a/x"], ["a"]),                       # "a/**" matches what is inside a, not a itself
    (["*/**"], ["b/x"], ["b"]),
    (["!**", ".a"], ["x"], [".a"]),                   # a later pattern wins over an earlier negation
    (["!*", "a?"], ["a /x"], ["a "]),
    (["[/[a-c]"], ["a/c/ab"], ["a", "a/c"]),          # '/' inside brackets anchors, '[' opens a class
    (["[/[ab]/?"], ["b/c"], ["b"]),
    (["**/[/[!a]"], ["a"], []),
    (["data/", "!data/keep"], ["data/keep"], ["data"]),  # no re-including inside an excluded directory
]


@pytest.mark.parametrize("pats,files,dirs", REGRESSIONS)
def test_regressions_against_git(repo: Path, pats: list[str], files: list[str], dirs: list[str]) -> None:
    git = _git_ignored(repo, pats, files, dirs)
    r = _resolver(pats)
    ours = {p for p in dirs if r.resolve(p, True) is Tier.IGNORE}
    ours |= {p for p in files if r.resolve(p, False) is Tier.IGNORE}
    assert ours == git


@pytest.mark.parametrize("pattern", ["[", "a[b", "a\\", "[[:nope:]]", "x/[a-"])
def test_dead_patterns_are_refused_by_the_config(tmp_path: Path, pattern: str) -> None:
    assert unusable_pattern(pattern) is not None
    (tmp_path / ".fractfs.toml").write_text(f"[local]\npatterns = [{pattern!r}]\n".replace("'", '"')
                                            if "\\" not in pattern else f"[local]\npatterns = ['{pattern}']\n")
    with pytest.raises(ConfigError, match=r"\.fractfs\.toml: \[local\]\.patterns\[0\]"):
        load_config(tmp_path, env={})

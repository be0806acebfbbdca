"""The tier resolver: precedence and gitignore semantics, checked against `git check-ignore` itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fractfs.config import Config
from fractfs.tiers import Tier, TierResolver


def resolver(dirs=(), local=(), ignore=()) -> TierResolver:  # type: ignore[no-untyped-def]
    cfg = Config(
        root=Path("/app"),
        config_file=None,
        backend="local",
        volume_root="/vol",
        dirs_root=Path("/vol"),
        dirs=tuple(dirs),
        local_patterns=tuple(local),
        ignore_patterns=tuple(ignore),
    )
    return TierResolver(cfg)


SPEC = resolver(
    dirs=["data/blobs", "exports", "cache/parquet"],
    local=["*.meta.json", "manifest.json", "index.sqlite"],
    ignore=["*.tmp", "__pycache__/", ".DS_Store", ".locks/"],
)


@pytest.mark.parametrize(
    "path,tier",
    [
        ("data/blobs/x.parquet", Tier.DIRS),
        ("data/blobs/sub/y.parquet", Tier.DIRS),
        ("data/blobs", Tier.DIRS),
        ("data/blobsx/y", Tier.DEFAULT),  # prefix of a name is not containment
        ("data/other.csv", Tier.DEFAULT),
        ("data/blobs/manifest.json", Tier.LOCAL),  # local beats dirs
        ("deep/a/b/manifest.json", Tier.LOCAL),  # unanchored name matches at any depth
        ("exports/a.meta.json", Tier.LOCAL),
        ("exports/a.tmp", Tier.IGNORE),  # ignore beats dirs
        ("exports/.locks/anything", Tier.IGNORE),  # directory pattern pins the subtree
        ("src/__pycache__/m.pyc", Tier.IGNORE),
        ("index.sqlite", Tier.LOCAL),
        ("app.py", Tier.DEFAULT),
    ],
)
def test_spec_examples(path: str, tier: Tier) -> None:
    assert SPEC.resolve(path) is tier


def test_ignore_beats_local() -> None:
    r = resolver(dirs=["d"], local=["*.json"], ignore=["secret.json"])
    assert r.resolve("d/secret.json") is Tier.IGNORE
    assert r.resolve("d/other.json") is Tier.LOCAL


def test_anchored_patterns() -> None:
    r = resolver(local=["data/blobs/manifest.json", "/top.txt"])
    assert r.resolve("data/blobs/manifest.json") is Tier.LOCAL
    assert r.resolve("x/data/blobs/manifest.json") is Tier.DEFAULT
    assert r.resolve("top.txt") is Tier.LOCAL
    assert r.resolve("sub/top.txt") is Tier.DEFAULT


def test_cases_where_a_general_gitignore_library_disagrees_with_git() -> None:
    """The reason tiers.py translates patterns itself instead of using pathspec (1.1): on these, pathspec's
    GitIgnoreSpec answers the opposite of `git check-ignore`, which would save a file the user's own
    .gitignore-style rule leaves out, or keep one it should catch."""
    # git never descends into an excluded directory, so a later "!" cannot bring a child back
    r = resolver(ignore=["d/", "!d/keep"])
    assert r.resolve("d/keep") is Tier.IGNORE
    # POSIX character classes inside brackets
    r = resolver(ignore=["[[:alpha:]]x"])
    assert r.resolve("bx") is Tier.IGNORE
    assert r.resolve("1x") is Tier.DEFAULT


def test_explain_names_rule() -> None:
    d = SPEC.explain("exports/.locks/q")
    assert (d.tier, d.table, d.rule, d.matched_as) == (Tier.IGNORE, "ignore", ".locks/", "exports/.locks/")
    d = SPEC.explain("data/blobs/f")
    assert (d.table, d.rule) == ("dirs", "data/blobs")
    assert SPEC.explain("app.py").as_dict()["tier"] == "default"


def test_comments_and_blank_lines_do_not_shift_rules() -> None:
    r = resolver(ignore=["# comment", "", "*.log"])
    assert r.explain("a.log").rule == "*.log"


# Patterns and paths exercising anchoring, **, trailing '/', character classes and negation.
GIT_PATTERNS = [
    "*.log",
    "!keep.log",
    "build/",
    "/root-only.txt",
    "docs/**/*.md",
    "**/cache",
    "a/**/b",
    "tmp*/",
    "[ab]x.dat",
    "nested/dir/file",
    "logs/",
    "!logs/important.txt",
    "\\#hash",
    "sp\\ ace",
]
GIT_PATHS = [
    "x.log",
    "keep.log",
    "d/keep.log",
    "build/out.o",
    "src/build/out.o",
    "build",
    "root-only.txt",
    "sub/root-only.txt",
    "docs/a.md",
    "docs/x/y/z.md",
    "other/docs/a.md",
    "cache",
    "p/q/cache",
    "p/cache/f",
    "a/b",
    "a/x/y/b",
    "a/b/c",
    "tmp1/f",
    "tmpfile",
    "ax.dat",
    "cx.dat",
    "nested/dir/file",
    "z/nested/dir/file",
    "logs/important.txt",
    "logs/other.txt",
    "#hash",
    "sp ace",
    "plain.txt",
]


def test_matches_git_check_ignore(tmp_path: Path, git: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([git, "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("\n".join(GIT_PATTERNS) + "\n")
    proc = subprocess.run(
        [git, "-C", str(repo), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(GIT_PATHS) + "\n",
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 1), proc.stderr
    git_ignored = set(proc.stdout.split("\n")) - {""}
    r = resolver(ignore=GIT_PATTERNS)
    ours = {p for p in GIT_PATHS if r.resolve(p) is Tier.IGNORE}
    assert ours == git_ignored, f"only ours: {ours - git_ignored}; only git: {git_ignored - ours}"

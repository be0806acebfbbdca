"""tools/mutation.py is run by hand (about an hour); here only that it still works: every configured module
exists and yields mutants (the modules are about to move), and its machinery kills a tested mutant and lets
an untested one survive on a made-up module."""
from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.slow
def test_mutation_tool_finds_mutants_and_works() -> None:
    tool = REPO / "tools" / "mutation.py"
    listed = subprocess.run([sys.executable, str(tool), "--list"], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL, check=False)
    assert listed.returncode == 0, listed.stderr
    counts = {line.split()[0]: int(line.split()[2]) for line in listed.stdout.splitlines() if line.strip()}
    assert set(counts) == {"format", "catalog", "capture", "diff", "engine", "restorer", "lease",
                           "tiers", "patterns"}, listed.stdout
    assert all(n > 0 for n in counts.values()), counts
    check = subprocess.run([sys.executable, str(tool), "--self-check"], capture_output=True, text=True,
                           timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert check.returncode == 0 and "self-check: ok" in check.stdout, check.stdout + check.stderr

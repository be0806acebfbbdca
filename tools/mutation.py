#!/usr/bin/env python3
"""Mutation testing for the modules that carry fractfs's guarantees (issue 15). Run by hand, not by pytest.

Each *mutant* is the source with one small change a programmer could make by mistake: a comparison turned
around (``==``/``!=``, ``<``/``>=``, ``in``/``not in``), ``and``/``or`` swapped, a ``not`` dropped, a number
moved by one, ``True``/``False`` swapped, ``break``/``continue`` swapped, or a call statement removed. A
mutant is *killed* when the module's test subset fails on it, *survived* when the subset still passes.
Logging calls, docstrings and strings are never mutated.

Why not mutmut: mutmut 3 rewrites modules into trampolines in a ``mutants/`` copy and switches mutants in the
test process; half of the tests that carry the guarantees run fractfs in child processes (signals, exit
hooks, a second node), which import ``src/`` and would never see a mutant, and its first phase runs the whole
test directory in that copy (it failed there after 3.6 minutes on files it had not copied). This tool edits
one module's text per mutant in a private copy of the checkout and runs the subset there, so child processes
(which put that copy's ``src/`` on PYTHONPATH) run the mutant too.

    python tools/mutation.py                    # every module in MODULES, 2 mutants at a time
    python tools/mutation.py --module lease     # one module
    python tools/mutation.py --list             # only count the mutants
    python tools/mutation.py --json out.json    # also write every mutant and its outcome
    python tools/mutation.py --self-check       # the machinery on a made-up module (a few seconds)

The modules move in the restructuring that follows issue 15: edit MODULES (path, functions, tests) below.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

REPO = Path(__file__).resolve().parent.parent

# -- what to mutate and which tests must notice --------------------------------------------------------------
# path: the module; functions: only mutate inside these (qualified as Class.method or function; empty = the
# whole module); tests: pytest arguments of the fast subset that must kill its mutants.
GUARANTEE_TESTS = "tests/test_guarantees.py"
#: constants moved by one or set to 0: many are sizes and limits where that changes nothing observable
NUMBERS = ["int+1", "int->0", "float*2", "float->0"]


@dataclass
class Target:
    path: str
    tests: list[str]
    functions: list[str] = field(default_factory=list)
    #: mutation kinds left out for this module (see Mutant.kind), to keep a run within an hour
    skip: list[str] = field(default_factory=list)
    #: environment for the test subset (e.g. fewer generated examples)
    env: dict[str, str] = field(default_factory=dict)


MODULES: dict[str, Target] = {
    "format": Target("src/fractfs/snapshot/format.py",
                     ["tests/test_snapshot_catalog.py", "tests/test_snapshot_restore.py",
                      f"{GUARANTEE_TESTS}::test_manifest_whose_bytes_do_not_match_its_name_is_refused",
                      "tests/test_reliability_hostile.py"],
                     ["parse_snapshot_key", "parse_snapshot_id", "encode_manifest", "_inflate", "decode_manifest"]),
    "catalog": Target("src/fractfs/snapshot/catalog.py",
                      ["tests/test_snapshot_catalog.py", "tests/test_snapshot_restore.py", "tests/test_snapshot_prune.py",
                       "tests/test_snapshot_engine.py",
                       f"{GUARANTEE_TESTS}::test_manifest_whose_bytes_do_not_match_its_name_is_refused"]),
    "capture": Target("src/fractfs/snapshot/capture.py",
                      [f"{GUARANTEE_TESTS}::test_sqlite_commit_only_in_the_wal_is_checkpointed",
                       f"{GUARANTEE_TESTS}::test_rewrite_within_one_clock_tick_of_the_read_is_not_lost",
                       "tests/test_snapshot_engine.py", "tests/test_snapshot_sqlite.py", "-m", "not slow"],
                      ["racy_ns", "same", "capture", "_capture_sqlite"],
                      NUMBERS),
    "diff": Target("src/fractfs/snapshot/diff.py",
                   [f"{GUARANTEE_TESTS}::test_checkpoint_after_the_store_was_emptied_stores_everything_again",
                    f"{GUARANTEE_TESTS}::test_sqlite_commit_only_in_the_wal_is_checkpointed",
                    "tests/test_snapshot_engine.py", "tests/test_snapshot_sqlite.py",
                    "tests/test_snapshot_unrestored.py", "tests/test_snapshot_restore.py", "-m", "not slow"],
                   ["compare", "confirm_restored", "_sqlite_dbs", "_sidecar_of", "_symlink", "_file", "is_sqlite",
                    "relocate", "carry_unrestored", "stored_paths", "new_content"],
                   NUMBERS),
    "engine": Target("src/fractfs/snapshot/engine.py",
                     [f"{GUARANTEE_TESTS}::test_checkpoint_after_the_store_was_emptied_stores_everything_again",
                      f"{GUARANTEE_TESTS}::test_sqlite_commit_only_in_the_wal_is_checkpointed",
                      f"{GUARANTEE_TESTS}::test_rewrite_within_one_clock_tick_of_the_read_is_not_lost",
                      "tests/test_snapshot_engine.py", "tests/test_snapshot_sqlite.py",
                      "tests/test_snapshot_unrestored.py", "tests/test_checkpointer.py", "-m", "not slow"],
                     ["_Look.synced", "prepare", "_choose_base", "_store_dirty", "_captured", "_place", "_settle",
                      "_manifest", "_cache_out", "commit", "_write_manifest", "_save_state"],
                     NUMBERS),
    "restorer": Target("src/fractfs/snapshot/restorer.py",
                       [f"{GUARANTEE_TESTS}::test_restore_overwrite_replaces_a_same_size_local_edit",
                        "tests/test_snapshot_restore.py", "tests/test_snapshot_unrestored.py",
                        "tests/test_reliability_hostile.py"],
                       ["_intact", "_Writer._same_as_local", "_Writer._refetch", "_Writer.write_bytes",
                        "_Writer.write_run", "_Writer._write_staged", "_Writer.write_object", "_restore"],
                       NUMBERS),
    "lease": Target("src/fractfs/lease.py",
                    ["tests/test_lease.py", "tests/test_lifecycle.py::test_lease_takeover_rules",
                     "tests/test_lifecycle.py::test_lease_unreadable_or_ancient_objects",
                     "tests/test_lifecycle.py::test_lease_exclusive_create_has_one_winner[plain]",
                     "tests/test_lifecycle.py::test_stale_lease_is_taken_over_after_sigkill",
                     "tests/test_lifecycle.py::test_second_node_is_read_only_until_the_first_releases",
                     f"{GUARANTEE_TESTS}::test_a_node_whose_clock_runs_ahead_does_not_take_a_live_lease",
                     f"{GUARANTEE_TESTS}::test_commit_is_refused_once_the_lease_cannot_be_renewed"]),
    "tiers": Target("src/fractfs/tiers.py",
                    ["tests/test_tiers.py", "tests/test_reliability_gitignore.py"],
                    skip=NUMBERS, env={"FRACTFS_HYPOTHESIS_EXAMPLES": "60"}),
    "patterns": Target("src/fractfs/patterns.py",
                       ["tests/test_patterns.py", "tests/test_tiers.py", "tests/test_reliability_gitignore.py"],
                       skip=NUMBERS, env={"FRACTFS_HYPOTHESIS_EXAMPLES": "60"}),
}


# -- finding mutants -------------------------------------------------------------------------------------------

@dataclass
class Mutant:
    module: str
    line: int
    col: int
    kind: str
    before: str
    after: str
    function: str
    outcome: str = ""  # killed | survived | timeout | error
    seconds: float = 0.0


Located = Union[ast.expr, ast.stmt]  # nodes with a position in the source

_CMP_SWAP: dict[type, type] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
_BIN_SWAP: dict[type, type] = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.Div: ast.Mult,
                               ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}
_LOG_NAMES = {"log", "logging", "logger"}


def _is_log_call(node: ast.AST) -> bool:
    """log.info(...), logging.warning(...), warnings.warn(...): messages, not behaviour."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        return f.value.id in _LOG_NAMES or (f.value.id == "warnings" and f.attr == "warn")
    return False


class _Finder(ast.NodeVisitor):
    def __init__(self, source: str, module: str, functions: list[str]):
        self.source = source
        self.module = module
        self.functions = set(functions)
        self.stack: list[str] = []
        self.found: list[tuple[Mutant, Located, str]] = []  # (mutant, node, replacement text)

    # scope ------------------------------------------------------------------------------------------------
    def _scoped(self) -> bool:
        if not self.functions:
            return True
        qual = ".".join(self.stack)
        return any(qual == f or qual.startswith(f + ".") for f in self.functions)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.stack.append(node.name)
        for stmt in node.body:  # decorators, defaults and annotations are not behaviour worth mutating here
            self.visit(stmt)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return  # f-strings: messages

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) or _is_log_call(node.value):
            return  # docstrings and logging
        if isinstance(node.value, ast.Call) and self._scoped():
            self._add(node, "drop call", "pass", stmt=True)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if _is_log_call(node):
            return
        self.generic_visit(node)

    # mutations --------------------------------------------------------------------------------------------
    def _add(self, node: Located, kind: str, text: str, *, stmt: bool = False) -> None:
        before = ast.get_source_segment(self.source, node) or ""
        m = Mutant(self.module, node.lineno, node.col_offset, kind, before.splitlines()[0][:80] if before else "",
                   text if stmt else text[:80], ".".join(self.stack) or "<module>")
        self.found.append((m, node, text))

    def visit_Compare(self, node: ast.Compare) -> None:
        if self._scoped():
            for i, op in enumerate(node.ops):
                swap = _CMP_SWAP.get(type(op))
                if swap is None:
                    continue
                new = ast.Compare(left=node.left, ops=list(node.ops), comparators=node.comparators)
                new.ops[i] = swap()
                self._add(node, f"{type(op).__name__}->{swap.__name__}", f"({ast.unparse(new)})")
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        if self._scoped():
            other: ast.boolop = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self._add(node, f"{type(node.op).__name__}->{type(other).__name__}",
                      f"({ast.unparse(ast.BoolOp(op=other, values=node.values))})")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if self._scoped() and isinstance(node.op, ast.Not):
            self._add(node, "drop not", f"({ast.unparse(node.operand)})")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = _BIN_SWAP.get(type(node.op))
        if self._scoped() and swap is not None and not _is_str(node):
            self._add(node, f"{type(node.op).__name__}->{swap.__name__}",
                      f"({ast.unparse(ast.BinOp(left=node.left, op=swap(), right=node.right))})")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if not self._scoped():
            return
        v = node.value
        if isinstance(v, bool):
            self._add(node, "flip bool", repr(not v))
        elif isinstance(v, int):
            self._add(node, "int+1", f"({v + 1})")
            if v != 0:
                self._add(node, "int->0", "(0)")
        elif isinstance(v, float) and v != 0:  # 0.0 * 2 would be the same program
            self._add(node, "float*2", f"({v * 2!r})")
            self._add(node, "float->0", "(0.0)")

    def visit_Break(self, node: ast.Break) -> None:
        if self._scoped():
            self._add(node, "break->continue", "continue", stmt=True)

    def visit_Continue(self, node: ast.Continue) -> None:
        if self._scoped():
            self._add(node, "continue->break", "break", stmt=True)


def _is_str(node: ast.BinOp) -> bool:
    return any(isinstance(x, (ast.JoinedStr, ast.Constant)) and isinstance(getattr(x, "value", None), str)
               for x in (node.left, node.right)) or isinstance(node.left, ast.JoinedStr)


def find_mutants(name: str, target: Target, repo: Path = REPO) -> list[tuple[Mutant, str]]:
    """Every mutant of ``target`` as (description, mutated source)."""
    path = repo / target.path
    source = path.read_text()
    finder = _Finder(source, name, target.functions)
    finder.visit(ast.parse(source))
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln))
    out = []
    for m, node, text in finder.found:
        if m.kind in target.skip:
            continue
        start = offsets[node.lineno - 1] + _byte_to_char(lines[node.lineno - 1], node.col_offset)
        end_line = node.end_lineno or node.lineno
        end = offsets[end_line - 1] + _byte_to_char(lines[end_line - 1], node.end_col_offset or 0)
        mutated = source[:start] + text + source[end:]
        try:
            compile(mutated, str(path), "exec")
        except SyntaxError:
            continue
        out.append((m, mutated))
    return out


def _byte_to_char(line: str, col: int) -> int:
    return len(line.encode("utf-8")[:col].decode("utf-8", errors="ignore"))


# -- running them ----------------------------------------------------------------------------------------------

def make_copy(repo: Path, into: Path) -> Path:
    """A private copy of what the tests need (src, tests, benchmarks, examples, pyproject.toml)."""
    into.mkdir(parents=True, exist_ok=True)
    for part in ("src", "tests", "benchmarks", "examples", "docs", "pyproject.toml", "README.md"):
        p = repo / part
        if p.is_dir():
            shutil.copytree(p, into / part, ignore=shutil.ignore_patterns("__pycache__", ".venv*", "*.pyc"),
                            symlinks=True)
        elif p.exists():
            shutil.copy2(p, into / part)
    return into


def run_tests(copy: Path, tests: list[str], timeout: float,
              extra_env: Optional[dict[str, str]] = None) -> tuple[str, float]:
    env = dict(os.environ)
    env.update(extra_env or {})
    env["PYTHONPATH"] = str(copy / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutant's .pyc must never outlive it (same size, same mtime)
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                            "-p", "no:randomly", "-o", "addopts=", *tests],
                           cwd=copy, env=env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0
    took = time.monotonic() - t0
    if r.returncode == 0:
        return "survived", took
    if r.returncode == 1:
        return "killed", took
    return f"error (pytest exit {r.returncode}): {(r.stdout + r.stderr).strip().splitlines()[-1:]}", took


def check_import_path(copy: Path) -> None:
    """The copy's src must win over any installed fractfs (an editable install points at the checkout)."""
    env = dict(os.environ, PYTHONPATH=str(copy / "src"))
    got = subprocess.run([sys.executable, "-c", "import fractfs; print(fractfs.__file__)"], env=env, cwd=copy,
                         capture_output=True, text=True, check=True).stdout.strip()
    if not got.startswith(str(copy / "src")):
        raise SystemExit(f"mutation: the tests would import {got}, not the copy under {copy}")


def _key(m: Mutant) -> tuple[str, int, int, str, str]:
    return (m.module, m.line, m.col, m.kind, m.after)


def run_module(name: str, target: Target, jobs: int, limit: Optional[int], work: Path,
               progress: bool = True, on_result: Optional[Callable[[Mutant], None]] = None,
               known: Optional[dict[tuple[str, int, int, str, str], Mutant]] = None) -> list[Mutant]:
    found = find_mutants(name, target)
    if limit is not None:
        found = found[:limit]
    kept = [known[_key(m)] for m, _ in found if known and _key(m) in known]
    mutants = [(m, text) for m, text in found if not known or _key(m) not in known]
    for m in kept:
        if on_result is not None:
            on_result(m)
    if not mutants:
        return kept
    copies = [make_copy(REPO, work / f"{name}-{i}") for i in range(max(1, jobs))]
    check_import_path(copies[0])
    base, took = run_tests(copies[0], target.tests, timeout=1800, extra_env=target.env)
    if base != "survived":
        raise SystemExit(f"mutation: {name}: the test subset fails without any mutant ({base}); fix that first")
    timeout = max(60.0, 5 * took)
    if progress:
        print(f"[{name}] {len(mutants)} mutants, subset takes {took:.1f}s unmutated", file=sys.stderr)
    free = list(copies)
    done = 0

    def one(item: tuple[Mutant, str]) -> Mutant:
        nonlocal done
        m, text = item
        copy = free.pop()
        path = copy / target.path
        original = path.read_text()
        try:
            path.write_text(text)
            m.outcome, m.seconds = run_tests(copy, target.tests, timeout, extra_env=target.env)
        finally:
            path.write_text(original)
            free.append(copy)
        done += 1
        if on_result is not None:
            on_result(m)
        if progress:
            print(f"[{name}] {done}/{len(mutants)} {m.outcome:<8} {target.path}:{m.line} {m.kind}: "
                  f"{m.before!r} -> {m.after!r}", file=sys.stderr)
        return m

    with ThreadPoolExecutor(max_workers=len(copies)) as pool:
        results = list(pool.map(one, mutants))
    return kept + results


def summarize(results: dict[str, list[Mutant]]) -> str:
    rows = ["| module | mutants | killed | survived | timeout | error | killed % |",
            "|---|---|---|---|---|---|---|"]
    tot = {"n": 0, "killed": 0, "survived": 0, "timeout": 0, "error": 0}
    for name, ms in results.items():
        c = {k: sum(1 for m in ms if m.outcome.startswith(k)) for k in ("killed", "survived", "timeout", "error")}
        n = len(ms)
        dead = c["killed"] + c["timeout"]
        rows.append(f"| {name} | {n} | {c['killed']} | {c['survived']} | {c['timeout']} | {c['error']} | "
                    f"{100 * dead / n if n else 0:.0f} |")
        tot["n"] += n
        for k in c:
            tot[k] += c[k]
    dead = tot["killed"] + tot["timeout"]
    rows.append(f"| **all** | {tot['n']} | {tot['killed']} | {tot['survived']} | {tot['timeout']} | "
                f"{tot['error']} | {100 * dead / tot['n'] if tot['n'] else 0:.0f} |")
    lines = ["\n".join(rows), "", "survivors:"]
    for name, ms in results.items():
        for m in ms:
            if m.outcome == "survived":
                lines.append(f"  {MODULES[name].path if name in MODULES else name}:{m.line} [{m.function}] "
                             f"{m.kind}: {m.before!r} -> {m.after!r}")
    return "\n".join(lines)


# -- self-check ------------------------------------------------------------------------------------------------

def self_check() -> int:
    """Mutate a made-up module: the mutant of the tested function must be killed, the one of the untested
    function must survive, and the docstring and the logging call must not be mutated at all."""
    with tempfile.TemporaryDirectory(prefix="fractfs-mutation-") as tmp:
        root = Path(tmp)
        (root / "src" / "demo").mkdir(parents=True)
        (root / "tests").mkdir()
        (root / "src" / "demo" / "__init__.py").write_text(textwrap.dedent("""
            import logging
            log = logging.getLogger("demo")

            def clamp(x, hi):
                \"\"\"Docstrings are never mutated.\"\"\"
                log.info("clamping %s", x)
                if x > hi:
                    return hi
                return x

            def untested(flag):
                return not flag
        """))
        (root / "tests" / "test_demo.py").write_text(textwrap.dedent("""
            from demo import clamp

            def test_clamp():
                assert clamp(5, 3) == 3 and clamp(2, 3) == 2 and clamp(3, 3) == 3
        """))
        target = Target("src/demo/__init__.py", ["tests/test_demo.py"])
        found = find_mutants("demo", target, root)
        kinds = sorted(m.kind for m, _ in found)
        assert kinds == ["Gt->LtE", "drop not"], kinds
        env = dict(os.environ)
        outcomes = []
        for m, text in found:
            (root / target.path).write_text(text)
            env["PYTHONPATH"] = str(root / "src")
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                                *target.tests], cwd=root, env=env, capture_output=True, text=True, check=False,
                               stdin=subprocess.DEVNULL)
            outcomes.append((m.kind, "killed" if r.returncode == 1 else "survived" if r.returncode == 0 else
                             f"error {r.returncode}"))
        assert sorted(outcomes) == [("Gt->LtE", "killed"), ("drop not", "survived")], outcomes
    print("mutation self-check: ok (2 mutants found, the tested one killed, the untested one survived)")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--module", action="append", choices=sorted(MODULES), help="only these (repeatable)")
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested at once (each in its own copy)")
    ap.add_argument("--limit", type=int, help="at most this many mutants per module (a quick look)")
    ap.add_argument("--list", action="store_true", help="count the mutants, run nothing")
    ap.add_argument("--json", type=Path, help="write every mutant and its outcome here (after each one)")
    ap.add_argument("--resume", type=Path, help="keep the killed mutants of this --json file, test the rest")
    ap.add_argument("--summary", type=Path, help="only print the table of a --json file written earlier")
    ap.add_argument("--self-check", action="store_true", help="check the machinery on a made-up module")
    args = ap.parse_args(argv)
    if args.self_check:
        return self_check()
    if args.summary:
        doc = json.loads(args.summary.read_text())
        print(summarize({k: [Mutant(**m) for m in v] for k, v in doc.items()}))
        return 0
    names = args.module or list(MODULES)
    if args.list:
        for n in names:
            ms = find_mutants(n, MODULES[n])
            print(f"{n:<10} {MODULES[n].path:<36} {len(ms):>5} mutants")
        return 0
    results: dict[str, list[Mutant]] = {}
    t0 = time.monotonic()
    partial: dict[str, list[Mutant]] = {}
    lock = threading.Lock()

    def save(m: Mutant) -> None:  # after every mutant, so an interrupted run still leaves its figures
        with lock:
            partial.setdefault(m.module, []).append(m)
            if args.json:
                args.json.write_text(json.dumps({k: [asdict(x) for x in v] for k, v in partial.items()},
                                                indent=1))

    known = None
    if args.resume:
        known = {_key(m): m for v in json.loads(args.resume.read_text()).values() for m in map(lambda d: Mutant(**d), v)
                 if m.outcome in ("killed", "timeout")}  # survivors are tested again (new tests may kill them)
    with tempfile.TemporaryDirectory(prefix="fractfs-mutation-") as tmp:
        for n in names:
            results[n] = run_module(n, MODULES[n], args.jobs, args.limit, Path(tmp), on_result=save, known=known)
    print(f"# mutation run: {time.monotonic() - t0:.0f}s, {args.jobs} at a time\n")
    print(summarize(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

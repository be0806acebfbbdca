"""How the ``fractfs`` command talks: results on stdout (text or one JSON document), notes and errors as
one line each on stderr, a progress bar only on a terminal, library log lines reformatted, snapshot ids and
sizes shortened for humans."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

from ..redact import redact
from ..report import human_bytes
from ..snapshot.format import short_id

log = logging.getLogger("fractfs")

PROG = "fractfs"


class Out:
    """Everything the command prints goes through here: stdout for results, stderr for notes and errors.

    And so everything is redacted here: a Volume URL or an endpoint may carry credentials (docs/security.md).
    """

    def __init__(self, *, json_mode: bool, quiet: bool, verbose: bool,
                 stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None):
        self.json_mode = json_mode
        self.quiet = quiet
        self.verbose = verbose
        # the streams of the moment (not of import time), so a caller that redirects them is obeyed
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr

    def line(self, text: str = "") -> None:
        """A result line (suppressed by --json, whose document is the result)."""
        if not self.json_mode:
            print(redact(text), file=self.stdout)

    def info(self, text: str) -> None:
        """A line worth seeing but not needed by a script (suppressed by -q and --json)."""
        if not self.quiet and not self.json_mode:
            print(redact(text), file=self.stdout)

    def note(self, text: str) -> None:
        """A side remark on stderr (never mixed into --json output)."""
        if not self.quiet:
            print(f"{PROG}: {redact(text)}", file=self.stderr)

    def error(self, text: str) -> None:
        """``fractfs: error: ...`` on stderr, even with -q."""
        print(f"{PROG}: error: {redact(text)}", file=self.stderr)

    def json(self, doc: Any) -> None:
        print(redact(json.dumps(doc, indent=2, sort_keys=False, default=str)), file=self.stdout)

    def progress(self, label: str, total: Optional[int], counter: Callable[[], int]) -> Progress:
        return Progress(label, total, counter, self.stderr, enabled=self.shows_progress())

    def shows_progress(self) -> bool:
        """A progress bar is drawn: not with -q, and only on a terminal (in a pipe or log it is noise)."""
        return not self.quiet and isatty(self.stderr)


def isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A one-line progress bar on stderr, redrawn with ``\\r`` from a background thread.

    Only drawn on a terminal: in a pipe or a log file the redraws would be noise. The work itself reports
    nothing; ``counter()`` (bytes read so far) is polled, so the library needs no progress hooks.
    """

    WIDTH = 24

    def __init__(self, label: str, total: Optional[int], counter: Callable[[], int], stream: TextIO,
                 *, enabled: bool, interval: float = 0.2):
        self.label = label
        self.total = total
        self.counter = counter
        self.stream = stream
        self.enabled = enabled
        self.interval = interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started = time.monotonic()
        self._width = 0

    def render(self, done: int, elapsed: float) -> str:
        if self.total:
            frac = min(done / self.total, 1.0)
            filled = int(frac * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            return (f"{self.label} [{bar}] {frac * 100:3.0f}%  {human_bytes(done)} / "
                    f"{human_bytes(self.total)}  {elapsed:.0f}s")
        return f"{self.label}  {human_bytes(done)}  {elapsed:.0f}s"

    def _draw(self) -> None:
        text = self.render(self.counter(), time.monotonic() - self._started)
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def __enter__(self) -> Progress:
        if self.enabled:
            self._started = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="fractfs-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._draw()
        # leave the final state visible, then move on to a fresh line for the report
        self.stream.write("\n")
        self.stream.flush()


# ---------------------------------------------------------------------------------------------------------
# Library log lines


class LogFormatter(logging.Formatter):
    """``fractfs: warning: message`` (library messages often start with ``fractfs:`` already)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if msg.startswith("fractfs: "):
            msg = msg[len("fractfs: "):]
        text = f"{PROG}: {record.levelname.lower()}: {msg}"
        if record.exc_info and record.levelno >= logging.ERROR and log.isEnabledFor(logging.DEBUG):
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(args: argparse.Namespace) -> Callable[[], None]:
    """Library logs to stderr at the level the global options ask for. Returns the undo, which the entry
    point calls when the command ends (main() may run inside another program, e.g. a test)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    level = logging.WARNING
    if args.debug:
        level = logging.DEBUG
    elif args.verbose:
        level = logging.INFO
    elif args.quiet:
        level = logging.ERROR
    previous = (log.level, log.propagate)
    log.setLevel(level)
    handler.setLevel(level)
    log.addHandler(handler)
    log.propagate = False

    def undo() -> None:
        log.removeHandler(handler)
        log.setLevel(previous[0])
        log.propagate = previous[1]

    return undo


@contextlib.contextmanager
def library_quiet(args: argparse.Namespace) -> Iterator[None]:
    """Hide library log lines that this command reports itself (verify's damage list, ...), unless -v."""
    if args.verbose or args.debug:
        yield
        return
    previous = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(previous)


# ---------------------------------------------------------------------------------------------------------
# Text for humans


def when(ts: Optional[float]) -> str:
    """Local time, to the second (``?`` when unknown)."""
    if ts is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


_FULL_ID = re.compile(r"\b\d{12}-[0-9a-f]{64}\b")


def shorten_ids(text: str) -> str:
    """Library messages name snapshots by their 77-character id; print the short form instead."""
    return _FULL_ID.sub(lambda m: short_id(m.group(0)), text)


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def app_path(label: str) -> str:
    """``root:a/b`` / ``scratch:a/b`` → the app-relative path (both areas mirror app-relative paths)."""
    return label.split(":", 1)[1] if ":" in label else label


def dest(label: str, areas: dict[str, Path]) -> str:
    """Where a restored ``area:relpath`` label lands: app-relative for the root, else the full path."""
    area, _, rel = label.partition(":")
    if area == "root":
        return rel
    base = areas.get(area)
    return str(base / rel) if base is not None else label

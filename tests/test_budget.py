"""Bounded background cost (issue 12): the budget's pacing arithmetic, what its CPU meter counts, how the daemon
obeys it, the config keys, and a real app under a write load with and without a budget."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import App

from fractfs.budget import CPU_LIMIT, THREADS, UPLOAD_LIMIT, Budget, CpuMeter
from fractfs.cli.status import _cost, _window
from fractfs.config import load_config
from fractfs.daemon import SyncDaemon
from fractfs.errors import ConfigError
from fractfs.snapshot import catalog

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def budget(cpu: float | None = 0.2, upload: float | None = None) -> tuple[Budget, Clock]:
    clock = Clock()
    return Budget(cpu, upload, clock=clock), clock


# -- the arithmetic -------------------------------------------------------------------------------------

def test_cheap_checkpoints_are_not_delayed() -> None:
    b, clock = budget(0.2)
    start = clock.now
    clock.now += 0.02
    b.record(start, clock.now, cpu=0.01, uploaded=4096)
    until, by = b.hold()
    # 10 ms of CPU under a fifth of a core: 50 ms after its start, i.e. 30 ms after it ended, shorter than any
    # debounce or interval
    assert until == pytest.approx(start + 0.05) and by == CPU_LIMIT
    clock.now += 0.03
    assert b.describe()["held_by"] is None and b.describe()["held_for"] == 0


def test_an_expensive_checkpoint_holds_the_next_one_so_the_minute_average_holds() -> None:
    b, clock = budget(0.2)
    start = clock.now
    clock.now += 1.5
    b.record(start, clock.now, cpu=1.0, uploaded=0)
    until, by = b.hold()
    assert until == pytest.approx(start + 5.0) and by == CPU_LIMIT  # 1 s of CPU at 20 %: 5 s from its start
    assert b.describe()["held_for"] == pytest.approx(3.5)


def test_a_constant_load_stays_within_the_budget_over_every_minute() -> None:
    """Back-to-back checkpoints of 1 s CPU (1.2 s wall), each started as soon as the budget lets it, for ten
    minutes: every 60 s window holds at most 20 % of a core plus the one checkpoint at its edge."""
    b, clock = budget(0.2)
    runs: list[tuple[float, float]] = []  # (start, cpu)
    while clock.now < 1600:
        clock.now = max(clock.now, b.hold()[0])
        start = clock.now
        clock.now += 1.2
        b.record(start, clock.now, cpu=1.0, uploaded=0)
        runs.append((start, 1.0))
    assert len(runs) == pytest.approx(600 / 5, abs=2)
    for t0 in range(1000, 1540, 7):
        used = sum(c for s, c in runs if t0 <= s < t0 + 60)
        assert used <= 0.2 * 60 + 1.0, (t0, used)
    assert b.describe()["cpu_used"] == pytest.approx(0.2, abs=0.02)


def test_explicit_checkpoints_count_but_their_debt_is_capped() -> None:
    """sync_now() in a loop at a full core: never held itself, and the background checkpoint after it waits at
    most a minute plus the last one's own share."""
    b, clock = budget(0.2)
    for _ in range(600):
        start = clock.now
        clock.now += 1.0
        b.record(start, clock.now, cpu=1.0, uploaded=0, background=False)
    until, _ = b.hold()
    assert clock.now + 5 < until <= clock.now + 60 + 5


def test_upload_budget() -> None:
    b, clock = budget(None, upload=2 * MiB)
    start = clock.now
    clock.now += 1.0
    b.record(start, clock.now, cpu=3.0, uploaded=20 * MiB)
    assert b.hold() == (pytest.approx(start + 10.0), UPLOAD_LIMIT)  # 20 MiB at 2 MiB/s; CPU unbounded
    both, clock = budget(0.5, upload=2 * MiB)
    start = clock.now
    clock.now += 1.0
    both.record(start, clock.now, cpu=10.0, uploaded=2 * MiB)
    assert both.hold() == (pytest.approx(start + 20.0), CPU_LIMIT)  # the later of the two


def test_unbounded_never_holds() -> None:
    b, clock = budget(None)
    start = clock.now
    clock.now += 30
    b.record(start, clock.now, cpu=30.0, uploaded=10**9)
    assert b.hold() == (float("-inf"), None)
    st = b.describe()
    assert st["cpu_budget"] is None and st["held_for"] == 0 and st["held_by"] is None
    assert st["cpu_used"] == pytest.approx(1.0)  # 30 s of CPU over the 30 s since start


def test_describe_averages_over_the_last_minute() -> None:
    b, clock = budget(0.5)
    clock.now += 120
    for _ in range(3):
        start = clock.now
        clock.now += 1
        b.record(start, clock.now, cpu=0.6, uploaded=3 * MiB)
        clock.now += 9
    st = b.describe()
    assert st["checkpoints"] == 3 and st["cpu_seconds"] == pytest.approx(1.8)
    assert st["cpu_used"] == pytest.approx(1.8 / 60) and st["upload_rate"] == pytest.approx(9 * MiB / 60, abs=1)
    clock.now += 61
    assert b.describe()["checkpoints"] == 0


# -- the meter ------------------------------------------------------------------------------------------

def _spin(seconds: float) -> None:
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass


def test_meter_counts_fractfs_threads_and_the_caller_not_the_apps() -> None:
    """A spinning app thread is left out; a fractfs pool thread that has already exited and the thread that
    runs the checkpoint (sync_now on the app's thread) are counted."""
    meter = CpuMeter()
    assert meter.mode == THREADS  # Linux: /proc/self/task is there
    stop = threading.Event()
    app = threading.Thread(target=lambda: [_spin(0.01) for _ in iter(stop.is_set, True)], name="app-busy")
    app.start()
    try:
        time.sleep(0.05)
        reading = meter.read()
        worker = threading.Thread(target=_spin, args=(0.3,), name="fractfs-put_0")
        worker.start()
        worker.join()
        _spin(0.1)
        spent = meter.spent(reading)
    finally:
        stop.set()
        app.join()
    assert 0.38 <= spent <= 0.6, spent  # 0.4 s of ours; the app thread spun as long again


# -- the daemon obeys it --------------------------------------------------------------------------------

class Ticks:
    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self) -> None:
        self.times.append(time.monotonic())

    def wait_for(self, n: int, seconds: float = 10.0) -> bool:
        end = time.monotonic() + seconds
        while len(self.times) < n and time.monotonic() < end:
            time.sleep(0.01)
        return len(self.times) >= n


def test_daemon_waits_for_the_hold_and_reports_the_stretched_window() -> None:
    t = Ticks()
    until = [0.0]
    d = SyncDaemon(t, 0.05, debounce=0.05, cooldown_factor=0, hold=lambda: (until[0], CPU_LIMIT))
    d.watched = True
    until[0] = time.monotonic() + 0.6
    d.start()
    try:
        changed = time.monotonic()
        d.notify_change()
        assert t.wait_for(1, 5)
        assert t.times[0] >= until[0]  # neither the 50 ms interval nor the 50 ms debounce ran it sooner
        time.sleep(0.05)
        w = d.loss_window()
        assert w["stretched_by"] == CPU_LIMIT and w["stretched_checkpoints"] >= 1
        assert w["seconds"] >= 0.55 and w["seconds"] <= time.monotonic() - changed + 0.01
        assert w["target"] == 0.05 and w["basis"] == "changes"
        # held far away: a new change waits, and shows as pending; stopping is not held
        until[0] = time.monotonic() + 3600
        d.notify_change()
        time.sleep(0.3)
        runs = len(t.times)
        w = d.loss_window()
        assert w["pending_for"] is not None and w["pending_for"] >= 0.25 and w["stretched_by"] == CPU_LIMIT
    finally:
        t0 = time.monotonic()
        d.stop(timeout=2)
        assert time.monotonic() - t0 < 0.5 and not d.running
    assert len(t.times) == runs


def test_daemon_without_hold_runs_at_the_interval_and_measures_from_the_previous_start() -> None:
    t = Ticks()
    d = SyncDaemon(t, 0.1, hold=lambda: (float("-inf"), None))
    d.start()
    try:
        assert t.wait_for(4, 5)
    finally:
        d.stop(timeout=2)
    gaps = [b - a for a, b in zip(t.times, t.times[1:])]
    assert all(0.09 <= g < 0.5 for g in gaps), gaps
    w = d.loss_window()
    assert w["basis"] == "interval" and w["stretched_by"] is None and w["stretched_checkpoints"] == 0
    assert 0.09 <= w["typical"] < 0.5 and w["pending_for"] is None


# -- configuration --------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, cpu, upload", [
    ({}, 0.2, None),
    ({"fractfs_CPU_BUDGET": "0.05"}, 0.05, None),
    ({"FRACTFS_CPU_BUDGET": "5%"}, 0.05, None),
    ({"fractfs_CPU_BUDGET": "off"}, None, None),
    ({"fractfs_CPU_BUDGET": "0"}, None, None),
    ({"fractfs_UPLOAD_BUDGET": "10MiB"}, 0.2, 10 * MiB),
    ({"fractfs_UPLOAD_BUDGET": "5 MB/s"}, 0.2, 5_000_000),
    ({"fractfs_UPLOAD_BUDGET": "1048576"}, 0.2, MiB),
    ({"fractfs_UPLOAD_BUDGET": "off"}, 0.2, None),
])
def test_config_budget_values(tmp_path: Path, env: dict[str, str], cpu: float | None, upload: float | None) -> None:
    cfg = load_config(tmp_path, env=env)
    assert cfg.cpu_budget == (pytest.approx(cpu) if cpu is not None else None)
    assert cfg.upload_budget == upload
    assert cfg.summary()["cpu_budget"] == cfg.cpu_budget and cfg.summary()["upload_budget"] == upload


def test_config_budget_from_toml(tmp_path: Path) -> None:
    (tmp_path / ".fractfs.toml").write_text('cpu_budget = 0.1\nupload_budget = "2MiB"\n')
    cfg = load_config(tmp_path, env={})
    assert cfg.cpu_budget == 0.1 and cfg.upload_budget == 2 * MiB
    assert cfg.sources["cpu_budget"].endswith(": cpu_budget")


@pytest.mark.parametrize("where, value, says", [
    ("fractfs_CPU_BUDGET", "fast", "fractfs_CPU_BUDGET"),
    ("fractfs_CPU_BUDGET", "-0.1", "fractfs_CPU_BUDGET"),
    ("fractfs_CPU_BUDGET", "nan", "fractfs_CPU_BUDGET"),
    ("fractfs_CPU_BUDGET", "1000", "core"),
    ("fractfs_UPLOAD_BUDGET", "10M", "fractfs_UPLOAD_BUDGET"),
    ("fractfs_UPLOAD_BUDGET", "ten MiB", "fractfs_UPLOAD_BUDGET"),
    ("fractfs_UPLOAD_BUDGET", "10", "1 KiB"),
    ("fractfs_UPLOAD_BUDGET", "-1MiB", "fractfs_UPLOAD_BUDGET"),
])
def test_config_budget_errors_name_the_variable(tmp_path: Path, where: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={where: value})
    assert where in str(err.value) and says in str(err.value)


@pytest.mark.parametrize("line", ["cpu_budget = true", "cpu_budget = [0.2]", "upload_budget = -5"])
def test_config_budget_errors_name_the_key(tmp_path: Path, line: str) -> None:
    (tmp_path / ".fractfs.toml").write_text(line + "\n")
    with pytest.raises(ConfigError, match=line.split()[0]):
        load_config(tmp_path, env={})


def test_status_lines() -> None:
    cost = _cost({"cpu_budget": 0.2, "cpu_used": 0.0512, "cpu_measured": THREADS, "upload_rate": 3 * MiB,
                  "upload_budget": None, "held_for": 1.5, "held_by": CPU_LIMIT})
    assert cost == ("cpu 5.12 % of a core over the last minute (budget 20 %), upload 3.0 MiB/s; next checkpoint "
                    "held 1.5s by the cpu budget")
    window = _window({"seconds": 1.234, "target": 1.0, "basis": "interval", "stretched_by": CPU_LIMIT})
    assert window == "up to ~1.23 s recently (target interval 1 s; stretched by cpu budget)"


# -- a real app under a write load ----------------------------------------------------------------------

LOAD = """
    import subprocess, threading
    fractfs.init()
    os.makedirs("hot", exist_ok=True)
    def rewrite_all():
        for k in range({files}):
            with open(f"hot/f{{k:04d}}.bin", "wb") as f:
                f.write(os.urandom(4096))
    rewrite_all()
    fractfs.sync_now()
    stop = threading.Event()
    writer_cpu = []
    def writer():
        t0 = time.thread_time()
        while not stop.is_set():
            rewrite_all()
            time.sleep(0.05)
        writer_cpu.append(time.thread_time() - t0)
    syncs0 = fractfs.status()["syncs"]
    p0, m0, w0 = time.process_time(), time.thread_time(), time.monotonic()
    t = threading.Thread(target=writer, name="app-writer")
    t.start()
    time.sleep({seconds})
    stop.set()
    t.join()
    st = fractfs.status()
    wall = time.monotonic() - w0
    # fractfs' CPU: the process's, less the app's two threads (the writer, and this one sleeping)
    cpu = (time.process_time() - p0) - writer_cpu[0] - (time.thread_time() - m0)
    cli = subprocess.run([sys.executable, "-m", "fractfs", "status"], capture_output=True, text=True)
    fractfs.sync_now()  # the writer's last round: its cost holds the next background checkpoint back
    held = fractfs.status()["budget"]["held_for"]
    # an explicit checkpoint is never held by the budget
    put("asked.txt", "saved on request")
    t1 = time.monotonic()
    stored = fractfs.sync_now()
    took = time.monotonic() - t1
    put("final.txt", "saved at shutdown")
    fractfs.shutdown()
    out(cpu=cpu, wall=wall, syncs=st["syncs"] - syncs0, budget=st["budget"], window=st["data_loss_window"],
        held=held, took=took, stored=stored, cli=cli.stdout)
"""


def _load(tmp_path: Path, name: str, budget: str, seconds: float) -> dict[str, Any]:
    app = App(tmp_path, str(tmp_path / f"vol-{name}"), name)
    result: dict[str, Any] = app.run(LOAD.format(files=1000, seconds=seconds), fractfs_SYNC_INTERVAL="0.2",
                                     fractfs_SYNC_MODE="interval", fractfs_CPU_BUDGET=budget,
                                     # the writer keeps the GIL busy: a 2 s lease (the helpers' default) could
                                     # lapse on a loaded machine, and a node without it stores nothing
                                     fractfs_LEASE_TIMEOUT="30")
    newest, _ = catalog.newest_valid(app.store())
    assert newest is not None and ("root", "final.txt") in set(newest.paths())
    return result


def test_a_write_load_stays_within_the_cpu_budget(tmp_path: Path) -> None:
    """1000 files of 4 KiB rewritten every ~50 ms, checkpoints every 0.2 s: with a budget of 5 % of a core the
    checkpoints are stretched and fractfs' threads stay near 5 %; without one they run at the interval."""
    bounded = _load(tmp_path, "bounded", "0.05", 5.0)
    b, w = bounded["budget"], bounded["window"]
    assert b["cpu_budget"] == 0.05 and b["cpu_measured"] == THREADS
    # pacing guarantees the budget over the run plus the checkpoint at each edge
    assert bounded["cpu"] <= 0.05 * bounded["wall"] + 0.35, bounded
    assert w["stretched_by"] == CPU_LIMIT and w["stretched_checkpoints"] >= 1
    assert w["seconds"] > 0.2 and w["target"] == 0.2, w
    # sync_now() right after the load: held by nothing, though background checkpoints were held
    assert bounded["stored"] == ["asked.txt"]
    assert bounded["held"] > 0.5 and bounded["took"] < bounded["held"], bounded
    assert "cost        cpu" in bounded["cli"] and "stretched by cpu budget" in bounded["cli"], bounded["cli"]

    free = _load(tmp_path, "free", "off", 3.0)
    assert free["budget"]["cpu_budget"] is None and free["budget"]["held_by"] is None
    assert free["window"]["stretched_by"] is None and free["window"]["stretched_checkpoints"] == 0
    # at the interval: several times as many checkpoints per second, each costing what the bounded ones did
    assert free["syncs"] / free["wall"] >= 2 * bounded["syncs"] / bounded["wall"], (free, bounded)
    assert free["cpu"] / free["wall"] > bounded["cpu"] / bounded["wall"]

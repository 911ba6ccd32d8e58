"""Runs a command and measures its whole process tree: wall time, CPU and memory per role.

A local Beam job is a driver process plus one SDK worker process per worker (started
through `sh -c`), so neither the driver's own `resource.getrusage` nor a wall clock
says where the CPU went or how much memory the job held at once. This samples
`/proc` (Linux) every few tens of milliseconds: the CPU time each process had used
when last seen, and the sum of the resident sets of all live processes at each
sample, whose maximum is the job's peak memory.
"""

import dataclasses
import os
import subprocess
import time
from collections.abc import Sequence

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SAMPLE_SECONDS = 0.05
WORKER_MARK = "sdk_worker_main"


@dataclasses.dataclass
class TreeUsage:
    """What one command used: wall seconds, CPU seconds (per role and in all), peak summed RSS."""

    wall_seconds: float
    cpu_seconds: dict[str, float]
    total_cpu_seconds: float
    peak_rss_bytes: int
    peak_rss_by_role: dict[str, int]
    workers_started: int
    returncode: int


def _children(pid: int) -> list[int]:
    """Children started by any thread (the runner starts its workers from a thread)."""
    children = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as handle:
                children.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return children


def _descendants(root: int) -> list[int]:
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        frontier.extend(_children(pid))
    return found


def _cpu_and_rss(pid: int) -> tuple[float, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14, stime 15, rss 24 (1-based, man proc).
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return cpu, int(fields[21]) * PAGE_BYTES


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
    except OSError:
        return "other"
    if WORKER_MARK.encode() in command:
        return "workers" if not command.startswith(b"/bin/sh") else "other"
    return "other"


def run(command: Sequence[str], env: dict[str, str] | None = None, log_path: str | None = None,
        cwd: str | None = None) -> TreeUsage:
    """Runs `command` to completion (in `cwd`) while sampling its process tree."""
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    start = time.perf_counter()
    process = subprocess.Popen(list(command), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    last_cpu: dict[int, tuple[str, float]] = {}
    peak, peak_by_role = 0, {}
    while True:
        pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        total, by_role = 0, {}
        for pid in _descendants(process.pid):
            sample = _cpu_and_rss(pid)
            if sample is None:
                continue
            # Asked at every sample (`sh -c` becomes the worker when it execs it); a process
            # that is exiting has no command line any more and keeps the role it had.
            role = _role(pid, process.pid)
            if role == "other" and pid in last_cpu:
                role = last_cpu[pid][0]
            last_cpu[pid] = (role, sample[0])
            total += sample[1]
            by_role[role] = by_role.get(role, 0) + sample[1]
        if total > peak:
            peak, peak_by_role = total, by_role
        time.sleep(SAMPLE_SECONDS)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if log_path:
        log.close()
    cpu: dict[str, float] = {}
    for role, seconds in last_cpu.values():
        cpu[role] = cpu.get(role, 0.0) + seconds
    workers = sum(1 for role, _ in last_cpu.values() if role == "workers")
    # wait4 counts the whole tree exactly (each process reaps its own children); the
    # per-role split is as last sampled, so it misses each process's final few ticks.
    total = rusage.ru_utime + rusage.ru_stime
    return TreeUsage(wall, cpu, total, peak, peak_by_role, workers, process.returncode)

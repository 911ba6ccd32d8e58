"""Profiles every thread of every Python process that starts with this folder on PYTHONPATH.

The local Beam runner's driver moves data in gRPC and executor threads, and its SDK
workers process bundles in pool threads that neither `python -m cProfile` (main
thread only) nor Beam's `--profile_cpu` (not passed to local subprocess workers)
reach. Python imports `sitecustomize` at start-up, so the benchmark puts this folder
first on PYTHONPATH for one profiled job (shadowing any other `sitecustomize` for that
run): each thread runs under its own cProfile timed by the thread's CPU clock, so waiting
threads cost nothing, and at exit the process writes their merged stats to
`$CXR_PROFILE_DIR/<role>-<pid>.prof`. Without that variable it does nothing.
"""

import atexit
import cProfile
import os
import pstats
import sys
import threading
import time

_DIRECTORY = os.environ.get("CXR_PROFILE_DIR")
_PROFILES: list[cProfile.Profile] = []


def _role() -> str:
    command = " ".join(sys.orig_argv)
    return "worker" if "sdk_worker_main" in command else "driver"


def _profiled_bootstrap(original):
    def bootstrap_inner(self):
        profile = cProfile.Profile(time.thread_time)
        _PROFILES.append(profile)
        profile.enable()
        try:
            original(self)
        finally:
            profile.disable()
    return bootstrap_inner


def _write_stats() -> None:
    stats = None
    for profile in _PROFILES:
        # A snapshot, not create_stats(): that would also disable this (main) thread's hook.
        profile.snapshot_stats()
        if not profile.stats:
            continue
        if stats is None:
            stats = pstats.Stats(profile)
        else:
            stats.add(profile)
    if stats is not None:
        stats.dump_stats(os.path.join(_DIRECTORY, f"{_role()}-{os.getpid()}.prof"))


_MODULE = sys.orig_argv[2] if len(sys.orig_argv) > 2 and sys.orig_argv[1] == "-m" else ""
if _DIRECTORY and (_MODULE.startswith("beam_pipelines.") or _MODULE.endswith("sdk_worker_main")):
    main_profile = cProfile.Profile(time.thread_time)
    _PROFILES.append(main_profile)
    main_profile.enable()
    threading.Thread._bootstrap_inner = _profiled_bootstrap(threading.Thread._bootstrap_inner)
    atexit.register(_write_stats)

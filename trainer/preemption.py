"""SIGTERM, which Vertex AI sends before it preempts or stops a VM, turned into a clean stop.

Python runs a signal handler only between bytecodes, so a SIGTERM that arrives while a
compiled training loop runs is seen when that loop returns: the trainer checks
`requested` at every loop boundary, agrees with the other workers (see
`distribution.AnyWorker`), checkpoints and exits. Vertex AI leaves about 30 seconds
between SIGTERM and the kill; one loop plus a checkpoint must fit in it.
"""

import signal
import threading
import types

from absl import logging

EXIT_CODE = 128 + signal.SIGTERM  # What a shell reports for a process ended by SIGTERM.


class TerminationRequest:
    """A context that records SIGTERM instead of dying of it; restores the old handler on exit."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "TerminationRequest":
        if threading.current_thread() is threading.main_thread():  # Only the main thread may set handlers.
            self._previous = signal.signal(signal.SIGTERM, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _record(self, signum: int, frame: types.FrameType | None) -> None:
        if not self.requested:
            logging.warning("SIGTERM received: training stops at the end of the running loop, after a checkpoint")
        self.requested = True


class Terminated(SystemExit):
    """Training stopped for SIGTERM after a checkpoint; the job resumes from it when started again."""

    def __init__(self, message: str):
        super().__init__(EXIT_CODE)
        self.message = message

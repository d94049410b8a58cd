"""SIGINT and SIGTERM as requests to stop at the next batch boundary.

While :func:`stop_requests` is active, the signals set a flag instead of interrupting;
the trainer checks it after each step, writes a checkpoint and stops cleanly. The
previous handlers are restored on exit.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Which signal asked training to stop, if any: ``signum`` is None until one does."""

    def __init__(self):
        self.signum = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by a signal: 128 + its number (SIGINT: 130)."""
        return 128 + self.signum


@contextlib.contextmanager
def stop_requests(enabled: bool = True):
    """Yield a :class:`StopRequest` that SIGINT/SIGTERM set while the block runs.

    Handlers can only be installed from the main thread; elsewhere, or when not
    ``enabled``, the request never fires and signals behave as usual.
    """
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, frame):
        request.signum = signum

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

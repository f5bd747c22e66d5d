"""Stopping a training run cleanly: SIGTERM (a job scheduler) or Ctrl-C ends the run after the current
step, so the loop can save checkpoint_latest before it exits."""

from __future__ import annotations

import contextlib
import signal


class StopSignal(Exception):
    """Raised by the loop when a stop signal arrived, so it saves before exiting."""

    def __init__(self, signal_number: int):
        self.signal_number = signal_number
        super().__init__(signal_number)


class StopRequest:
    """Signal handler for SIGTERM and Ctrl-C: the loop stops after the current step and saves.

    Raising from the handler itself could land inside a data transform, which would wrap it; a second Ctrl-C
    still interrupts at once.
    """

    def __init__(self):
        self.signal_number: int | None = None
        self.saving = False

    def __call__(self, signum, frame) -> None:
        if self.signal_number is not None and signum == signal.SIGINT and not self.saving:
            raise KeyboardInterrupt
        self.signal_number = signum

    @contextlib.contextmanager
    def deferred(self):
        """While a checkpoint is written, a second Ctrl-C only asks to stop (which the loop then does):
        raised inside the writer it would leave no checkpoint at all."""
        self.saving = True
        try:
            yield
        finally:
            self.saving = False

    def check(self) -> None:
        if self.signal_number is not None:
            raise StopSignal(self.signal_number)


@contextlib.contextmanager
def stop_on_signals(install: bool):
    """A `StopRequest` handling SIGTERM and SIGINT (on the main process: the others follow it)."""
    request = StopRequest()
    previous = (
        {sig: signal.signal(sig, request) for sig in (signal.SIGTERM, signal.SIGINT)} if install else {}
    )
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def ignoring_signals():
    """SIGINT and SIGTERM ignored for the duration (the last save of an interrupted run)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

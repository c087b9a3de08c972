"""A work budget for the SymPy stages: the derivation and printing of a spec stop with a located
`SpecLimitError` naming the construct being worked on, instead of running for minutes.

Sizes are bounded where they are measured (after inlining, after each derivative), but one
SymPy call can still take long on a small input (a composition many levels deep, nested
piecewise exponents). On the main thread of a Unix process an interval timer interrupts such a
call; elsewhere the budget is checked between steps.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from ..errors import Span, SpecLimitError

SECONDS = 10.0  # derivation + printing of a shipped spec takes under 0.3 s; an input that
# needs 30x that is a composition no kernel should run, and the CLI stays interactive


class _OutOfTime(BaseException):
    """Raised from the timer's signal handler: a BaseException, so SymPy's own `except
    Exception` blocks cannot swallow it; turned into a SpecLimitError by `Budget.stage`."""


class Budget:
    """Seconds for a sequence of stages; `stage(what, span)` names the construct worked on."""

    def __init__(self, seconds: float | None = None):
        self.seconds = SECONDS if seconds is None else seconds
        self.start = time.monotonic()
        self.what, self.span = "the spec", None

    def _fail(self) -> SpecLimitError:
        return SpecLimitError(
            f"{self.what} takes more than {self.seconds:g} s",
            self.span,
            hint="simplify the formula: fewer nested functions, piecewise arms or powers",
        )

    def check(self) -> None:
        """Fail if the budget is spent (the cooperative check between steps)."""
        if time.monotonic() - self.start > self.seconds:
            raise self._fail()

    @contextlib.contextmanager
    def stage(self, what: str, span: Span | None = None):
        """Work on `what`, interrupted when the budget runs out."""
        self.what, self.span = what, span
        self.check()
        try:
            with _timer(self.seconds - (time.monotonic() - self.start)):
                yield
        except _OutOfTime:
            _disarm()  # again, should the alarm have fired inside _timer's cleanup
            raise self._fail() from None
        except RecursionError:  # SymPy recursing without end on a small input (fuzz-found)
            raise SpecLimitError(
                f"{self.what} nests too deeply for SymPy",
                self.span,
                hint="simplify the formula: fewer nested functions, piecewise arms or powers",
            ) from None
        self.check()


_armed = threading.Event()  # the handler raises only while a stage runs


def _raise(signum, frame):
    if _armed.is_set():
        raise _OutOfTime


def _disarm() -> None:
    _armed.clear()
    signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def _timer(seconds: float):
    """SIGALRM after `seconds`, repeating every 0.5 s until the block ends; a no-op off the
    main thread, without setitimer, or while another timer is set."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or _armed.is_set() or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        yield
        return
    previous = signal.signal(signal.SIGALRM, _raise)
    _armed.set()
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3), 0.5)
    try:
        yield
    finally:
        _disarm()
        signal.signal(signal.SIGALRM, previous)

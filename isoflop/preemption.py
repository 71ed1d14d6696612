"""Preemption: a signal that asks a run to stop waits for the step in flight, then checkpoints it.

SLURM announces a preemption or the time limit with a signal (SIGUSR2 from
``--signal``, SIGTERM; SIGUSR1 from some set-ups). submitit's handler then
calls ``RunJob.checkpoint`` (:mod:`isoflop.submission`), which calls
:func:`checkpoint_active_run`, requeues the job and exits. A checkpoint is
only consistent between optimizer steps, so while a run trains, a
:class:`Preemption` holds those signals:

- on entering, it puts a handler that only notes the signal in place of each
  one (Python runs signal handlers in the main thread, whichever thread the
  operating system delivered the signal to, so nothing else runs mid-step);
- at each step boundary the trainer calls :meth:`Preemption.at_step_boundary`,
  which hands every noted signal to the handler that was installed before
  (submitit's; or the default action, which ends the process; an ignored
  signal stays ignored);
- :meth:`Preemption.release` (before the final evaluation, whose state no
  step changes) and leaving it put the previous handlers back and deliver
  what is still held.

While it is active, :func:`checkpoint_active_run` calls the saver the trainer
registered with :meth:`Preemption.save_with`. Torch-free.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, ClassVar

PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class Preemption:
    """Holds preemption signals until a step boundary, and checkpoints the run on request.

    Use it as a context manager around a run. In a thread other than the main
    one (where Python cannot install handlers) it holds nothing and signals
    reach their handlers at once, as before.
    """

    _active: ClassVar[Preemption | None] = None

    def __init__(self) -> None:
        self._previous_handlers: dict[int, Any] = {}
        self._held: list[int] = []
        self._save: Callable[[], None] | None = None

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for signal_number in PREEMPTION_SIGNALS:
                previous = signal.signal(signal_number, self._hold)
                # None: a handler installed outside Python, which cannot be put back; the default instead
                self._previous_handlers[signal_number] = signal.SIG_DFL if previous is None else previous
        Preemption._active = self
        return self

    def __exit__(self, error_type: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        Preemption._active = None
        self._save = None
        held = self._restore_handlers()
        if error_type is None:  # on an error, the error goes first; a held signal is dropped
            self._deliver(held)

    def save_with(self, save: Callable[[], None]) -> None:
        """Register how to checkpoint the run (each rank calls it; rank 0 writes)."""
        self._save = save

    def holds_signal(self) -> bool:
        """Whether a signal arrived during the step in flight (it waits for the step boundary)."""
        return bool(self._held)

    def at_step_boundary(self) -> None:
        """Hand the signals held during the step to their previous handlers (the step is complete)."""
        held, self._held = self._held, []
        self._deliver(held)

    def release(self) -> None:
        """Stop holding: previous handlers back, held signals delivered now."""
        self._deliver(self._restore_handlers())

    def checkpoint(self) -> bool:
        """Checkpoint the run now; False when no saver is registered (set-up not finished)."""
        if self._save is None:
            return False
        self._save()
        return True

    @classmethod
    def active(cls) -> Preemption | None:
        """The Preemption of the run training in this process, if any."""
        return cls._active

    def _hold(self, signal_number: int, frame: FrameType | None) -> None:
        self._held.append(signal_number)

    def _restore_handlers(self) -> list[int]:
        for signal_number, handler in self._previous_handlers.items():
            signal.signal(signal_number, handler)
        self._previous_handlers = {}
        held, self._held = self._held, []
        return held

    def _deliver(self, held: list[int]) -> None:
        for signal_number in held:
            handler = self._previous_handlers.get(signal_number, signal.getsignal(signal_number))
            if handler == signal.SIG_IGN:
                continue
            if callable(handler):
                handler(signal_number, None)
            else:  # the default action (or a handler installed outside Python): raise it for real
                self._restore_handlers()
                signal.raise_signal(signal_number)


def checkpoint_active_run() -> bool:
    """Checkpoint the run training in this process (submitit's ``checkpoint()`` calls this).

    Returns False when no run is training here. On ranks other than 0 nothing
    is written (rank 0's state is the same) and True is returned.
    """
    active = Preemption.active()
    return active is not None and active.checkpoint()

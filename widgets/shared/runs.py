"""Running stages from a widget: in a worker thread, one run at a time per model, with the session marked busy.

A run in a worker thread leaves the kernel free to read the widgets' messages, so a click on Stop lands while
stylize runs. :class:`BackgroundRun` is the one way the explorer and the loss monitor start such runs.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from typing import Any, Callable

from stylegallery.errors import StyleGalleryError

_MODEL_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
RUNNING: "weakref.WeakSet" = weakref.WeakSet()  # sessions whose stages a widget runs now


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Run ``target`` in a daemon thread, leaving the kernel free to read widget messages (a click on Stop).

    The thread runs in a copy of the caller's context: what it prints or displays goes where the caller's would.
    """
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)
    thread.start()
    return thread


def model_lock(pipe) -> threading.Lock:
    """Held by a widget while it runs a stage on ``pipe``: one run at a time per model (the stages hook its UNet)."""
    with _LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(pipe, threading.Lock())


def check_idle(session) -> None:
    """Refuse an edit of a session whose stages run in a worker thread now."""
    if session is not None and session in RUNNING:
        raise StyleGalleryError("a run is in progress on this session: edit when it has finished")


class BackgroundRun:
    """One run at a time of a widget: ``work()`` holding the model's lock, in a worker thread or on the caller's.

    While it runs, its session (if any) is in :data:`RUNNING`, so edits of it are refused. Its return value is kept
    in :attr:`result` and an exception it raised in :attr:`error` (never lost in a thread).
    """

    def __init__(self, name: str):
        self.name = name
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """True while a run in the background goes on."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, work: Callable[[], Any], pipe, *, session=None, background: bool = True,
              waiting: Callable[[], None] | None = None, finished: Callable[[], None] | None = None) -> None:
        """Run ``work()``; ``waiting()`` is called first if another run holds the model, ``finished()`` last, in the
        run's thread, whatever happened."""
        self.result, self.error = None, None
        if session is not None:
            RUNNING.add(session)

        def body() -> None:
            lock = model_lock(pipe)
            try:
                if not lock.acquire(blocking=False):
                    if waiting is not None:
                        waiting()
                    lock.acquire()
                try:
                    self.result = work()
                finally:
                    lock.release()
            except Exception as exc:  # kept: the widget shows it, wait() raises it
                self.error = exc
            finally:
                if session is not None:
                    RUNNING.discard(session)
                if finished is not None:
                    finished()

        if background:
            self._thread = start_thread(body, self.name)
        else:
            body()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background run (at most ``timeout`` seconds); True when no run goes on any more."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.busy

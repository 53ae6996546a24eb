"""Running stages from a widget: in a worker thread, one run at a time per model, with the session marked busy.

A run in a worker thread leaves the kernel free to read the widgets' messages, so a click on Stop lands while
stylize runs. :class:`BackgroundRun` is the one way the explorer and the loss monitor start such runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
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
        """Wait for a background run (at most ``timeout`` seconds); True when no run goes on any more.

        A cell that waits so holds the kernel, which then reads no widget message (a click on Stop) until it ends,
        except on kernels that jupyter-ui-poll can drive (ipykernel before 7.4, Colab's). In a notebook, prefer
        ``await`` :meth:`wait_async`.
        """
        if self._thread is None:
            return True
        if not _pollable_kernel():
            self._thread.join(timeout)
            return not self.busy
        from jupyter_ui_poll import ui_events

        deadline = None if timeout is None else time.monotonic() + timeout
        with ui_events() as poll:
            while self.busy and (deadline is None or time.monotonic() < deadline):
                poll(20)  # the widget messages waiting, such as a click on Stop
                self._thread.join(0.05)
        return not self.busy

    async def wait_async(self, timeout: float | None = None) -> bool:
        """:meth:`wait` for a notebook cell (``await run.wait_async()``): while the cell waits, the kernel reads the
        widgets' messages, so Stop works, under Run All too (ipykernel 7.4 and later dispatch widget messages during
        an awaiting cell; on older kernels jupyter-ui-poll processes them)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = None
        if _pollable_kernel():
            from jupyter_ui_poll import ui_events

            poll = ui_events()
        while self.busy and (deadline is None or time.monotonic() < deadline):
            if poll is not None:
                async with poll as process:
                    await process(20)
            await asyncio.sleep(0.05)
        return not self.busy


def _pollable_kernel() -> bool:
    """Whether this is the main thread of a Jupyter kernel that jupyter-ui-poll can drive (one with
    ``do_one_iteration``, which ipykernel 7.4 removed)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None) if shell is not None else None
    return kernel is not None and hasattr(kernel, "do_one_iteration")

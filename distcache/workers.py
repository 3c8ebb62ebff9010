"""Pre-forked worker processes under one supervising parent (``-workers N``).

The parent binds the listeners, detaches, writes the pid file and drops privileges as a single
process would, then forks one child per :class:`WorkerSpec`; the children inherit the bound
sockets, so the kernel spreads the accepts among them. From then on the parent only supervises:

* a child that dies is logged and replaced; one that dies within ``MIN_UPTIME`` of its start
  waits before its replacement, twice as long each time up to ``MAX_BACKOFF``, so a crash loop
  costs little CPU and log space;
* signals named in ``forwarded`` (SIGHUP: reopen the log files, re-read the TLS files) never stop
  the parent: it runs ``on_forward`` itself (so that a replacement child inherits what was
  re-read), then passes the signal on to every child. A child keeps the action its program had
  for such a signal before the supervisor took over, except that where that was the default
  (which would kill it) the child ignores the signal;
* a child starts with the program's own handlers for the stop signals where it had some (such
  as one that remembers an early stop until the child's event loop takes over), so that a stop
  signal in the instant after the fork is honoured, not fatal;
* SIGTERM and SIGINT (and SIGUSR1/SIGUSR2 when ``killable``) are forwarded to the children, stage
  by stage (stage 0 first), each stage given ``stop_timeout`` seconds to stop before SIGKILL
  (:func:`stop_timeout_for` derives it from the children's drain period); a second stop signal
  is passed on as well, so that the children drop their connections at once, as a single process
  does on a second signal; the parent then runs its clean-up and exits 0. Each child has a
  process group of its own, so that signals from the terminal reach it only this way; if the
  parent dies, the kernel sends each child SIGTERM.

The loop is plain ``select`` on a self-pipe fed by the signal handlers (the design of gunicorn's
arbiter): the parent runs no event loop, so nothing of it is half-inherited by a child.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_WORKERS",
    "STOP_MARGIN",
    "Supervisor",
    "WorkerSpec",
    "cpu_count",
    "parse_workers",
    "stop_timeout_for",
]

log = logging.getLogger("distcache.workers")

#: The most workers ``-workers`` accepts (far beyond any useful number of cores).
MAX_WORKERS = 256
#: A child that lived less than this (seconds) counts as a crash at start-up.
MIN_UPTIME = 1.0
#: First and longest wait before replacing a child that keeps crashing at start-up (seconds).
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 10.0
#: Seconds a child has to exit once its drain period has ended (closing its listeners and
#: links, on a loaded host), before SIGKILL.
STOP_MARGIN = 5.0

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
KILLABLE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def stop_timeout_for(grace: float) -> float:
    """How long a stage of children may take to stop when each drains for up to ``grace``
    seconds: the drain is never cut short, and a stuck child is killed soon after it ends."""
    return grace + STOP_MARGIN


def parse_workers(text: str) -> int:
    """``-workers``: ``auto`` (one per CPU) or a decimal number in 1..MAX_WORKERS."""
    if text == "auto":
        return cpu_count()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"expected 'auto' or a decimal number in 1..{MAX_WORKERS}, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class WorkerSpec:
    """One kind of child: ``run`` is called in the forked child and returns its exit status."""

    name: str
    run: Callable[[], int]
    #: Children stop in increasing stage order (a server's workers before the engine's owner).
    stage: int = 0
    #: Called in the parent after each of its children has exited (the metrics drop its gauges).
    on_exit: Callable[[], None] | None = None


class _Slot:
    """One supervised place: the spec, the child filling it now, and its crash history."""

    __slots__ = ("crashes", "due", "label", "pid", "spec", "started")

    def __init__(self, spec: WorkerSpec, label: str) -> None:
        self.spec = spec
        self.label = label  # "worker 2", or the name alone when the spec is used once
        self.pid = 0
        self.started = 0.0
        self.crashes = 0  # deaths in a row within MIN_UPTIME of the start
        self.due = 0.0  # when to start the next child (monotonic), if pid == 0


class Supervisor:
    """Runs one child per spec until told to stop; :meth:`run` returns the exit status."""

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        *,
        killable: bool = False,
        on_started: Callable[[], None] | None = None,
        on_exit: Callable[[], None] | None = None,
        stop_requested: Callable[[], bool] | None = None,
        forwarded: Sequence[int] = (signal.SIGHUP,),
        on_forward: Callable[[int], None] | None = None,
        stop_timeout: float = STOP_MARGIN,
    ) -> None:
        names = [spec.name for spec in specs]
        self._slots: list[_Slot] = []
        for spec in specs:
            number = sum(1 for slot in self._slots if slot.spec.name == spec.name) + 1
            label = spec.name if names.count(spec.name) == 1 else f"{spec.name} {number}"
            self._slots.append(_Slot(spec, label))
        self._killable = killable
        self._on_started = on_started
        self._on_exit = on_exit
        #: Whether a stop signal came before the supervisor's own handlers were installed.
        self._stop_requested = stop_requested
        self._stop_timeout = stop_timeout
        #: Signals passed on to every child without stopping (SIGHUP: reopen logs, re-read TLS).
        self._forwarded = tuple(forwarded)
        self._on_forward = on_forward
        #: The program's own handlers for the forwarded and stop signals, restored in each child.
        self._child_handlers: dict[int, object] = {}
        self._signals: list[int] = []
        self._wake_read = self._wake_write = -1
        self._parent = 0

    @property
    def pids(self) -> list[int]:
        """The children running now."""
        return [slot.pid for slot in self._slots if slot.pid]

    # -- the parent's loop ------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        try:
            if self._stop_requested is not None and self._stop_requested():
                if self._on_started is not None:
                    self._on_started()
                return 0  # told to stop before serving: start nothing
            for slot in self._slots:
                self._spawn(slot)
            if self._on_started is not None:
                self._on_started()
            stop_signal = self._supervise()
            self._stop(stop_signal)
        finally:
            if self._on_exit is not None:
                self._on_exit()
            self._uninstall_signals()
        return 0

    def _supervise(self) -> int:
        """Reap and replace children until a stop signal arrives; return that signal."""
        while True:
            for signum in self._take_signals():
                if self._stops(signum):
                    log.info("received %s: stopping the workers", signal.Signals(signum).name)
                    return signum
                if signum in self._forwarded:
                    log.info("received %s: passed on to the workers", signal.Signals(signum).name)
                    if self._on_forward is not None:
                        self._on_forward(signum)
                    for pid in self.pids:
                        _kill(pid, signum)
            self._reap()
            now = time.monotonic()
            for slot in self._slots:
                if not slot.pid and slot.due <= now:
                    self._spawn(slot)
            dues = [slot.due for slot in self._slots if not slot.pid]
            timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
            self._sleep(timeout)

    def _stop(self, signum: int) -> None:
        """Forward ``signum`` stage by stage; SIGKILL what outlives ``stop_timeout``.

        A second stop signal while the children drain is passed on, as it would reach a single
        process: each child then drops its connections at once. From then on every child still
        running is sent the signal again at each wake-up (at least twice a second), so that a
        child that got both signals before handling the first (they merge) or a later stage
        stops at once too."""
        hurry = False
        for stage in sorted({slot.spec.stage for slot in self._slots}):
            slots = [slot for slot in self._slots if slot.spec.stage == stage]
            for slot in slots:
                if slot.pid:
                    _kill(slot.pid, signum)
            deadline = time.monotonic() + self._stop_timeout
            while any(slot.pid for slot in slots):
                self._reap(stopping=True)
                left = deadline - time.monotonic()
                if left <= 0:
                    for slot in slots:
                        if slot.pid:
                            log.error("%s (pid %d) did not stop: killed", slot.label, slot.pid)
                            _kill(slot.pid, signal.SIGKILL)
                    deadline = float("inf")  # SIGKILL cannot be refused: wait for the reaping
                    continue
                if any(slot.pid for slot in slots):
                    self._sleep(min(left, 0.5))
                    again = [s for s in self._take_signals() if self._stops(s)]
                    if again and not hurry:
                        log.info(
                            "received %s while stopping: the workers stop at once",
                            signal.Signals(again[0]).name,
                        )
                    hurry = hurry or bool(again)
                    if hurry:
                        for slot in slots:
                            if slot.pid:
                                _kill(slot.pid, signum)

    def _stops(self, signum: int) -> bool:
        """Whether ``signum`` asks the supervisor to stop."""
        return signum in STOP_SIGNALS or (self._killable and signum in KILLABLE_SIGNALS)

    # -- children -----------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # Signals wait while the child is half set up, then reach its own handlers.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, self._handled())
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            slot.crashes += 1
            slot.due = time.monotonic() + _backoff(slot.crashes)
            log.error("cannot start %s: %s", slot.label, error.strerror or error)
            return
        if pid == 0:
            self._become_child(slot, blocked)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        slot.pid = pid
        slot.started = time.monotonic()
        log.info("%s started (pid %d)", slot.label, pid)

    def _become_child(self, slot: _Slot, blocked: set) -> None:
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            os.close(self._wake_read)
            os.close(self._wake_write)
            for signum in self._handled():
                signal.signal(signum, self._child_handlers.get(signum, signal.SIG_DFL))
            if not self._killable:
                for signum in KILLABLE_SIGNALS:
                    signal.signal(signum, signal.SIG_IGN)
            _stop_with_parent(self._parent)
            # A process group of its own: a Ctrl-C at the terminal (SIGINT to the foreground
            # group) reaches the child once, forwarded by the supervisor in stage order.
            os.setpgid(0, 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            status = slot.spec.run()
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            log.exception("%s failed", slot.label)
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)  # never unwind into the parent's stack

    def _reap(self, *, stopping: bool = False) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((slot for slot in self._slots if slot.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            if slot.spec.on_exit is not None:
                slot.spec.on_exit()
            how = _describe_exit(status)
            if stopping:
                log.info("%s (pid %d) stopped: %s", slot.label, pid, how)
                continue
            now = time.monotonic()
            slot.crashes = slot.crashes + 1 if now - slot.started < MIN_UPTIME else 0
            delay = _backoff(slot.crashes)
            slot.due = now + delay
            log.error(
                "%s (pid %d) %s; starting a new one%s",
                slot.label,
                pid,
                how,
                f" in {delay:g} s" if delay else "",
            )

    # -- signals ------------------------------------------------------------------------------

    def _handled(self) -> set[int]:
        return {signal.SIGCHLD, *STOP_SIGNALS, *KILLABLE_SIGNALS, *self._forwarded}

    def _install_signals(self) -> None:
        self._parent = os.getpid()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        for signum in self._handled():
            if signum in KILLABLE_SIGNALS and not self._killable:
                previous = signal.signal(signum, signal.SIG_IGN)
            else:
                previous = signal.signal(signum, self._note_signal)
            stops = signum in (*STOP_SIGNALS, *KILLABLE_SIGNALS)
            if signum in self._forwarded and not stops:
                # A forwarded signal asks a child to do something, never to die.
                keep = previous not in (signal.SIG_DFL, None)
                self._child_handlers[signum] = previous if keep else signal.SIG_IGN
            elif stops and callable(previous):
                # Restored in the child before its signals are unblocked: a stop that waited
                # in the mask across the fork reaches the program, not the default action.
                self._child_handlers[signum] = previous

    def _uninstall_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in self._handled():
            signal.signal(signum, signal.SIG_DFL)
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _note_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _take_signals(self) -> list[int]:
        taken, self._signals = self._signals, []
        return [signum for signum in taken if signum != signal.SIGCHLD]

    def _sleep(self, timeout: float | None) -> None:
        """Wait for a signal (the wake-up pipe) or ``timeout`` seconds."""
        try:
            ready, _, _ = select.select([self._wake_read], [], [], timeout)
        except InterruptedError:
            return
        if ready:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while os.read(self._wake_read, 4096):
                    pass


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this child if the supervisor dies (even by SIGKILL), so
    that no worker keeps serving unsupervised; Linux only, elsewhere nothing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the supervisor died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


#: prctl option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _backoff(crashes: int) -> float:
    return 0.0 if crashes == 0 else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (crashes - 1))


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as error:
        if error.errno != errno.ESRCH:
            raise


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"was killed by signal {signum} ({name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"

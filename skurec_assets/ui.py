"""``skurec ui``: run ``dagster dev`` (webserver, daemon, code servers) and take all of it down on Ctrl-C / SIGTERM.

``dagster dev`` left to itself can keep its webserver and code-server processes alive long after it was asked to
stop. :func:`run_dagster_dev` therefore supervises it:

* ``dagster dev`` starts in its own session (process group), so signals reach it only through us;
* this process becomes a *child subreaper* (Linux), so descendants orphaned by a dying parent are re-parented to
  us instead of init and stay findable, and every descendant seen (pid + start time, from ``/proc``) is recorded
  while it runs;
* on SIGINT / SIGTERM / SIGHUP the signal is forwarded to ``dagster dev``, which gets ``grace_s`` seconds to shut
  its children down; what is left then gets SIGTERM, and after ``kill_after_s`` more seconds SIGKILL (its process
  group and every recorded descendant). Everything is gone well within 10 s.

Pids are only ever signalled after checking their start time, so a recycled pid is never hit.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

GRACE_S = 3.0  # dagster dev's own shutdown
KILL_AFTER_S = 2.0  # then SIGTERM to every remaining descendant, then SIGKILL
POLL_S = 0.5
_PR_SET_CHILD_SUBREAPER = 36

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class PortBusyError(RuntimeError):
    """The UI's port is taken: ``dagster dev`` would start its daemon and wait forever without a webserver."""


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortBusyError` (naming the remedy) when ``host:port`` cannot be bound right now."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PortBusyError(f"cannot resolve --host {host!r} ({exc}); pass an address such as 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise PortBusyError(
                f"port {port} on {host} is already in use ({exc.strerror}); stop what uses it or pass another --port"
            ) from None


def dagster_dev_command(host: str, port: int, module: str = "skurec_assets.definitions") -> list[str]:
    return [sys.executable, "-m", "dagster", "dev", "-m", module, "-h", host, "-p", str(port)]


# ------------------------------------------------------------------------------------------------ process table
def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time in clock ticks, state) of ``pid`` from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[19]), fields[0]


def descendants(pid: int) -> dict[int, int]:
    """Every live descendant of ``pid``: {pid: start time}. Empty where /proc is not available."""
    if not os.path.isdir("/proc"):
        return {}
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[2] != "Z":
                children.setdefault(st[0], []).append((int(entry), st[1]))
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, start in children.get(todo.pop(), []):
            if child not in out:
                out[child] = start
                todo.append(child)
    return out


def running(pids) -> list[int]:
    """The pids of ``pids`` that still run (zombies, which only wait to be reaped, do not count)."""
    out = []
    for pid in pids:
        st = _stat(pid)
        if st is not None and st[2] != "Z":
            out.append(pid)
    return out


def _alive(pid: int, start: int | None) -> bool:
    st = _stat(pid)
    if st is None:
        try:
            os.kill(pid, 0)  # no /proc: fall back to "the pid exists"
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return start is None
    return st[2] != "Z" and (start is None or st[1] == start)


def _signal_pid(pid: int, start: int | None, sig: int) -> None:
    if _alive(pid, start):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _become_subreaper() -> bool:
    """Orphaned descendants get re-parented to this process (Linux only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _reap_zombies(keep: int | None = None) -> None:
    """Collect exited children other than ``keep`` (the Popen, which reaps itself): orphans adopted as subreaper."""
    if not os.path.isdir("/proc"):
        return
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != keep:
            st = _stat(int(entry))
            if st is not None and st[0] == me and st[2] == "Z":
                try:
                    os.waitpid(int(entry), os.WNOHANG)
                except ChildProcessError:
                    pass


# ------------------------------------------------------------------------------------------------ supervisor
class DagsterDevSupervisor:
    """Start ``cmd`` in its own session, remember its process tree, stop all of it on request."""

    def __init__(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        grace_s: float = GRACE_S,
        kill_after_s: float = KILL_AFTER_S,
    ) -> None:
        self.cmd = list(cmd)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.grace_s = grace_s
        self.kill_after_s = kill_after_s
        self.proc: subprocess.Popen | None = None
        self.known: dict[int, int] = {}  # every descendant ever seen: pid -> start time
        self._stop = threading.Event()
        self._signal: int | None = None
        self._subreaper = False

    def start(self) -> subprocess.Popen:
        self._subreaper = _become_subreaper()
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, start_new_session=True)
        st = _stat(self.proc.pid)
        self.known[self.proc.pid] = st[1] if st else None  # type: ignore[assignment]
        return self.proc

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        """Ask for a shutdown (what the signal handlers call; safe from a handler)."""
        if self._signal is None:
            self._signal = sig
        self._stop.set()

    def _record(self) -> None:
        self.known.update(descendants(os.getpid()))

    def _remaining(self) -> dict[int, int]:
        self._record()
        return {pid: start for pid, start in self.known.items() if _alive(pid, start)}

    def wait(self) -> int:
        """Block until the child exits or a stop is requested; then make sure nothing of its tree survives."""
        assert self.proc is not None, "start() first"
        while not self._stop.is_set() and self.proc.poll() is None:
            self._record()
            self._stop.wait(POLL_S)
        if self.proc.poll() is None:
            self.shutdown(self._signal or signal.SIGTERM)
        else:
            self.shutdown(signal.SIGTERM)  # it exited by itself: children it left behind go too
        rc = self.proc.returncode
        if self._signal is not None:
            return 128 + int(self._signal)
        return int(rc if rc is not None else 1)

    def shutdown(self, sig: int = signal.SIGTERM) -> None:
        """Forward ``sig`` to dagster dev, give it ``grace_s``, then SIGTERM and finally SIGKILL whatever is left."""
        assert self.proc is not None
        self._record()
        pgid = self.proc.pid  # start_new_session: its pid is its process group id
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and self._remaining():
            self._poll_child()
            time.sleep(0.1)
        if self._remaining():
            _signal_group(pgid, signal.SIGTERM)
            for pid, start in self._remaining().items():
                _signal_pid(pid, start, signal.SIGTERM)
            deadline = time.monotonic() + self.kill_after_s
            while time.monotonic() < deadline and self._remaining():
                self._poll_child()
                time.sleep(0.1)
        left = self._remaining()
        if left:
            _signal_group(pgid, signal.SIGKILL)
            for pid, start in left.items():
                _signal_pid(pid, start, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and self._remaining():
            self._poll_child()
            time.sleep(0.05)
        self._poll_child()

    def _poll_child(self) -> None:
        if self.proc is not None:
            self.proc.poll()
        if self._subreaper:
            _reap_zombies(keep=self.proc.pid if self.proc is not None else None)


def run_dagster_dev(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    grace_s: float = GRACE_S,
    kill_after_s: float = KILL_AFTER_S,
) -> int:
    """Run ``dagster dev`` (``cmd``) until it exits or this process gets SIGINT / SIGTERM / SIGHUP; then stop its
    whole process tree (see the module docstring). Returns its exit code, or 128 + signal number when stopped."""
    sup = DagsterDevSupervisor(cmd, env=env, cwd=cwd, grace_s=grace_s, kill_after_s=kill_after_s)
    previous = {}

    def handler(signum, frame):  # noqa: ARG001
        sup.request_stop(signum)

    for sig in _STOP_SIGNALS:
        previous[sig] = signal.signal(sig, handler)
    try:
        sup.start()
        return sup.wait()
    except BaseException:
        if sup.proc is not None:
            sup.shutdown(signal.SIGTERM)
        raise
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

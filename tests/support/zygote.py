"""``hermes`` commands forked from an interpreter that has imported it already.

A fresh ``python -m hermes_producer`` spends about 0.45 s of CPU importing the CLI (click, the
engine, Redis and Celery clients) before it looks at its arguments; the suite runs a few hundred
commands. The zygote is a plain interpreter (not pytest) that imports ``hermes_producer.cli``,
exactly the modules a fresh command has imported when ``main`` starts, and forks a child per
command: a real process with its own pid, standard streams, environment, working directory,
umask and exit status, running ``python -m hermes_producer`` as the interpreter would
(``runpy._run_module_as_main``), and ending as the interpreter's own exit does (threads
waited for, atexit, flushing, an uncaught exception's traceback, KeyboardInterrupt's exit by
SIGINT) but without tearing the interpreter down.

What it cannot show is what happens before ``main``: the imports themselves. A command whose
environment differs from the zygote's in anything but ``HERMES_*`` (``PYTHON*``, locale, PATH,
``DOCKER_HOST``...) therefore runs in a fresh interpreter, as does every command when
``HERMES_TEST_FRESH_PROCESSES=1``; ``tests/test_support.py`` runs commands both ways and compares.
The modules that import the worker side alone in a fresh interpreter are tested in
``tests/test_module_graph.py``.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import ctypes
import gc
import io
import json
import os
import runpy
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

# Set for one test run by the one who starts the zygote; not one of the command's own variables.
IGNORED = ("HERMES_", "PYTEST_CURRENT_TEST")
CLIENT = Path(__file__).with_name("zygote_client.py")  # `hermes` as a program that forks from here
_FDS = 3  # the child's standard input, output and error


# --- the zygote ---------------------------------------------------------------------------------


def serve(path: str) -> dict[str, Any]:
    """Import the CLI, then fork a child for every request on the Unix socket ``path``.

    Returns only in a child, with its request, ready to run (see :func:`become`); the zygote
    itself loops until its parent (the test session) dies or it is terminated.
    """
    import hermes_producer.cli  # noqa: F401  # what a fresh command has imported when main starts

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the test session's end is ours
    if threading.active_count() != 1:
        raise RuntimeError("an import started a thread: forking this interpreter is not safe")
    gc.freeze()  # what is imported is never collected: a child's collections would copy every page of it
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    listener.listen(64)
    os.rename(path + ".new", path)  # the path appears once it accepts connections
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection that wants its status
    while True:
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in waiting:
                _reply(waiting.pop(pid), {"status": os.waitstatus_to_exitcode(status)})
        askers = {conn.fileno(): pid for pid, conn in waiting.items()}
        ready, _, _ = select.select([listener.fileno(), wake_r, *askers], [], [], 1.0)  # a child's exit wakes it
        if wake_r in ready:
            os.read(wake_r, 4096)
        for fd in set(ready) & set(askers):
            # Askers send nothing after their request: readable means gone (a test that timed
            # out, a zygote_client killed): its command goes too, and with it the pipes it holds.
            with contextlib.suppress(ProcessLookupError):
                os.kill(askers[fd], signal.SIGKILL)
        if listener.fileno() not in ready:
            continue
        conn, _ = listener.accept()
        request, fds = _receive(conn)
        pid = os.fork()
        if pid == 0:  # the child: nothing of the zygote's stays open or installed
            listener.close()
            for other in waiting.values():
                other.close()
            conn.close()
            os.close(wake_r)
            os.close(wake_w)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            return request
        for fd in fds:
            os.close(fd)
        waiting[pid] = conn
        _reply(conn, {"pid": pid})


def become(request: dict[str, Any]) -> None:
    """In a forked child: take the request's environment, then run ``python -m hermes_producer``."""
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = os.getcwd()  # as `python -m` has it
    # The standard streams as the interpreter makes them at start-up (Python/pylifecycle.c):
    # buffered, line-buffered on a terminal (standard error always), "\n" newlines.
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        old = getattr(sys, name)
        stream = io.TextIOWrapper(
            open(fd, "rb" if fd == 0 else "wb", closefd=False),  # noqa: SIM115  # sys owns it from now on
            encoding=old.encoding, errors=old.errors, newline="\n", line_buffering=fd == 2 or os.isatty(fd),
        )  # fmt: skip
        stream.mode = "r" if fd == 0 else "w"  # type: ignore[misc]
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    sys.argv = ["-m", *request["args"]]
    try:
        runpy._run_module_as_main("hermes_producer", alter_argv=True)  # type: ignore[attr-defined]
    except SystemExit as exc:
        _exit(_exit_status(exc.code))
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
        _exit(1, interrupted=True)
    except BaseException:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
        _exit(1)
    _exit(0)


def _exit_status(code: object) -> int:
    """The exit status of ``SystemExit(code)``, as the interpreter gives it (``_Py_HandleSystemExit``)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _exit(status: int, interrupted: bool = False) -> None:
    """End as the interpreter's own exit would (``Py_FinalizeEx``), less tearing the interpreter
    down: that takes 30 ms in a process with all of Hermes imported, and a few hundred commands
    a run. Non-daemon threads are waited for, atexit handlers run (logging's flush among them),
    then the standard streams are flushed: a failure on either makes the status 120, and on
    standard output is reported as the interpreter reports it. An uncaught KeyboardInterrupt ends
    the process by SIGINT, as ``python`` does."""
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except Exception as exc:
            if name == "stdout":
                sys.unraisablehook(_Unraisable(type(exc), exc, exc.__traceback__, None, stream))  # type: ignore[arg-type]
            status = 120
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


class _Unraisable(NamedTuple):
    """What ``sys.unraisablehook`` is given (``sys.UnraisableHookArgs`` cannot be built)."""

    exc_type: type[BaseException]
    exc_value: BaseException
    exc_traceback: Any
    err_msg: str | None
    object: object


def _reply(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the test that asked is gone (it timed out): nothing to tell
        conn.sendall(json.dumps(message).encode() + b"\n")
    if "status" in message:
        conn.close()


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds = b"", []
    while not data.endswith(b"\n"):
        chunk, more_fds, _, _ = socket.recv_fds(conn, 1 << 16, _FDS)
        if not chunk:
            raise ConnectionError("the test closed the connection mid-request")
        data += chunk
        fds += more_fds
    request: dict[str, Any] = json.loads(data.decode("utf-8", "surrogatepass"))
    return request, fds


# --- the test's side ----------------------------------------------------------------------------


class Zygote:
    """A zygote started from ``cwd`` with ``env`` (``HERMES_*`` left out), stopped by :meth:`stop`."""

    def __init__(self, env: Mapping[str, str], cwd: Path, socket_dir: Path) -> None:
        self.env = {k: v for k, v in env.items() if not k.startswith(IGNORED)}
        self.path = str(socket_dir / "zygote.sock")
        code = f"from tests.support.zygote import become, serve; become(serve({self.path!r}))"
        with (socket_dir / "zygote.log").open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-c", code], env=self.env, cwd=cwd,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)  # fmt: skip
        deadline = time.monotonic() + 60
        while not os.path.exists(self.path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the zygote did not start (exit {self.process.poll()})")
            time.sleep(0.01)

    def serves(self, env: Mapping[str, str]) -> bool:
        """Whether a command with ``env`` may fork from here (else it needs a fresh interpreter)."""
        return self.process.poll() is None and {k: v for k, v in env.items() if not k.startswith(IGNORED)} == self.env

    def start(self, args: list[str], env: Mapping[str, str], cwd: Path, fds: tuple[int, int, int]) -> Forked:
        """``hermes ARGS`` forked with ``fds`` as its standard input, output and error (the caller
        closes its own copies); it runs in the background (:class:`Forked`)."""
        umask = os.umask(0o022)
        os.umask(umask)
        request = {"args": args, "env": dict(env), "cwd": str(cwd), "umask": umask}
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.path)
        socket.send_fds(conn, [json.dumps(request).encode("utf-8", "surrogatepass") + b"\n"], array.array("i", fds))
        return Forked(args, conn)

    def run(self, args: list[str], env: Mapping[str, str], cwd: Path, input: bytes | None,
            timeout: float) -> tuple[int, bytes, bytes]:  # fmt: skip
        """``hermes ARGS`` in a forked child: (exit code, standard output, standard error), as
        :func:`subprocess.run` with ``capture_output`` gives them (TimeoutExpired after a SIGKILL)."""
        pipes = [os.pipe() for _ in range(_FDS)]
        theirs = (pipes[0][0], pipes[1][1], pipes[2][1])
        stdin, stdout, stderr = pipes[0][1], pipes[1][0], pipes[2][0]
        try:
            child = self.start(args, env, cwd, theirs)
        finally:
            for fd in theirs:
                os.close(fd)
        try:
            out, err = _communicate(stdin, stdout, stderr, input or b"", time.monotonic() + timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise subprocess.TimeoutExpired(args, timeout) from None
        return child.wait(), out, err

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class Forked:
    """A command forked by the zygote: what the tests use of :class:`subprocess.Popen` (``pid``,
    ``poll``, ``wait``, ``send_signal``, ``kill``, ``returncode``). Its exit status comes from the
    zygote, its parent, over the connection that asked for it."""

    def __init__(self, args: list[str], conn: socket.socket) -> None:
        self.args = args
        self.returncode: int | None = None
        self._conn = conn
        self._replies = conn.makefile("rb")
        self.pid: int = json.loads(self._replies.readline())["pid"]

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            self._read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._read_status()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # as Popen: never signal a pid that may have been reused
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _read_status(self) -> None:
        self.returncode = int(json.loads(self._replies.readline())["status"])
        self._replies.close()
        self._conn.close()


def _communicate(stdin: int, stdout: int, stderr: int, data: bytes, deadline: float) -> tuple[bytes, bytes]:
    """Write ``data`` to ``stdin`` and close it, while reading ``stdout`` and ``stderr`` to their end."""
    chunks: dict[int, list[bytes]] = {stdout: [], stderr: []}
    reading, pending = [stdout, stderr], memoryview(data)
    writing = [stdin]
    try:
        while reading or writing:
            if writing and not pending:
                os.close(stdin)
                writing = []
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired([], 0)
            readable, writable, _ = select.select(reading, writing, [], left)
            if writable:
                try:
                    pending = pending[os.write(stdin, pending[:65536]) :]
                except BrokenPipeError:  # the command does not read it all: as subprocess.run
                    pending = pending[:0]
            for fd in readable:
                chunk = os.read(fd, 65536)
                if chunk:
                    chunks[fd].append(chunk)
                else:
                    reading.remove(fd)
        return b"".join(chunks[stdout]), b"".join(chunks[stderr])
    finally:
        if writing:
            os.close(stdin)
        os.close(stdout)
        os.close(stderr)


# --- the test session's zygote ---------------------------------------------------------------

_session: dict[str, Any] = {}  # what conftest configured: the session's environment, where to start


def configure(env: Mapping[str, str], cwd: Path) -> None:
    """Remember the test session's environment as it starts (tests may change os.environ later)."""
    _session.update(env=dict(env), cwd=cwd, zygote=None)


def shared() -> Zygote | None:
    """The session's zygote, started on first use; None when none is configured (outside the
    suite) or with HERMES_TEST_FRESH_PROCESSES=1: every command in a fresh interpreter."""
    if not _session or _session["env"].get("HERMES_TEST_FRESH_PROCESSES") == "1":
        return None
    if _session["zygote"] is None:
        folder = Path(tempfile.mkdtemp(prefix="hermes-zygote-"))  # a short path: it holds a Unix socket
        _session["zygote"] = Zygote(_session["env"], _session["cwd"], folder)
    zygote: Zygote = _session["zygote"]
    return zygote


def stop_shared() -> None:
    """Stop the session's zygote, if it was started."""
    zygote = _session.pop("zygote", None)
    if zygote is not None:
        zygote.stop()
        shutil.rmtree(Path(zygote.path).parent, ignore_errors=True)

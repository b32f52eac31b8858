"""``hermes ARGS`` as a command on the PATH, forked from the test session's zygote.

The README's commands are run by bash as a user types them, so ``hermes`` must be a program:
this one (run with ``python -I -S``: the standard library only, about 10 ms to start instead of
the 0.45 s a fresh ``python -m hermes_producer`` spends importing the CLI) asks the zygote
(:mod:`tests.support.zygote`) to fork the command with this process's standard streams,
environment, working directory and umask, passes on the signals it gets, and exits as the
command did. If this process dies without passing a signal on (SIGKILL), the zygote kills the
command: nothing outlives the program its caller started.
"""

import array
import json
import os
import signal
import socket
import sys


def main(path: str, args: list[str]) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    request = {"args": args, "env": dict(os.environ), "cwd": os.getcwd(), "umask": umask}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    data = json.dumps(request).encode("utf-8", "surrogatepass") + b"\n"
    socket.send_fds(conn, [data], array.array("i", [0, 1, 2]))
    replies = conn.makefile("rb")
    pid = json.loads(replies.readline())["pid"]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda signum, frame: os.kill(pid, signum))
    line = replies.readline()
    status = int(json.loads(line)["status"]) if line else -signal.SIGKILL
    if status < 0:  # died of a signal: so does this process, as a shell's `exec hermes` would
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

"""A stand-in for wollomatic/socket-proxy, for hosts that cannot pull it (no registry).

compose.yaml's docker-proxy service passes wollomatic/socket-proxy's own flags; this program
reads the same flags and enforces them the same way, so the service's command is the one
source of the allowlist whichever image runs it:

- a client whose address is not one of ``-allowfrom`` (CIDRs or host names, resolved on every
  request) gets 403; a method with no ``-allowMETHOD`` pattern gets 405; a path that does not
  match its method's pattern (anchored: ``^(PATTERN)$``) gets 403;
- with ``-allowbindmountfrom``, a container create or update whose body binds a host path
  outside those folders gets 403. Stricter than upstream in three places: the check applies to
  paths with or without the ``/v1.NN`` prefix (upstream checks only versioned paths), a body
  that is not JSON is refused, and so is a volume mount with driver options (the local driver's
  ``type=none,o=bind,device=/`` binds a host folder; upstream lets all three through);
- ``-allowhealthcheck`` answers ``HEAD http://localhost:55555/health`` (the image's
  ``/healthcheck`` asks it); ``-watchdoginterval`` with ``-stoponwatchdog`` exits when the
  engine stops answering.

Allowed requests go to the engine's socket one per connection (``Connection: close``), and an
upgraded connection (``attach``) is relayed both ways until either side ends. Standard library
only: the image is Debian's python3 and this file (ops/compose-images.sh builds it).
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import os
import posixpath
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE", "OPTIONS")
MAX_BODY = 4 * 1024 * 1024  # a container create is a few KiB; anything bigger is refused
MAX_HEAD = 64 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
HEALTH_PORT = 55555


class Config:
    """The flags of wollomatic/socket-proxy that compose.yaml uses (unknown flags are an error)."""

    def __init__(self, argv: list[str]) -> None:
        self.allow: dict[str, re.Pattern[str]] = {}
        self.allow_from = ["127.0.0.1/32"]
        self.bind_mounts: list[str] = []
        self.listen_ip, self.port, self.socket_path = "127.0.0.1", 2375, "/var/run/docker.sock"
        self.healthcheck = self.stop_on_watchdog = False
        self.watchdog_s, self.grace_s = 0, 10
        for arg in argv:
            name, has_value, value = arg.lstrip("-").partition("=")
            if not arg.startswith("-") or not name:
                raise SystemExit(f"socket-proxy: not a flag: {arg!r}")
            method = name.removeprefix("allow").upper()
            if name.startswith("allow") and method in METHODS:
                self.allow[method] = re.compile(f"^(?:{value})$")
            elif name == "allowfrom":
                self.allow_from = [v for v in value.split(",") if v]
            elif name == "allowbindmountfrom":
                self.bind_mounts = [posixpath.normpath(v) for v in value.split(",") if v.startswith("/")]
            elif name in ("allowhealthcheck", "stoponwatchdog"):
                on = not has_value or value.lower() in ("1", "t", "true")
                setattr(self, "healthcheck" if name == "allowhealthcheck" else "stop_on_watchdog", on)
            elif name in ("listenip", "socketpath"):
                setattr(self, "listen_ip" if name == "listenip" else "socket_path", value)
            elif name in ("proxyport", "watchdoginterval", "shutdowngracetime"):
                number = int(value)
                if name == "proxyport":
                    self.port = number
                elif name == "watchdoginterval":
                    self.watchdog_s = number
                else:
                    self.grace_s = number
            elif name in ("loglevel", "logjson"):
                pass  # one line per refused request on stderr, whatever the level
            else:
                raise SystemExit(f"socket-proxy stand-in: flag -{name} is not supported")

    def client_allowed(self, address: str) -> bool:
        client = ipaddress.ip_address(address)
        for item in self.allow_from:
            try:
                if client in ipaddress.ip_network(item, strict=False):
                    return True
                continue
            except ValueError:
                pass
            try:  # a host name: resolved on every request, as upstream does (compose's DNS moves)
                resolved = {info[4][0] for info in socket.getaddrinfo(item, None)}
            except OSError:
                continue
            if address in resolved:
                return True
        return False


def bind_mount_refusal(config: Config, method: str, path: str, body: bytes) -> str | None:
    """Why a container create or update body is refused, or None when it may pass."""
    if not config.bind_mounts or method != "POST":
        return None
    if not re.fullmatch(r"(?:/v[0-9.]+)?/containers/(?:create|[^/]+/update)", path):
        return None
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return "body is not JSON"
    host = request.get("HostConfig") if isinstance(request, dict) else None
    if not isinstance(host, dict):
        return None
    sources = [str(b).split(":", 1)[0] for b in host.get("Binds") or []]
    mounts = [m for m in host.get("Mounts") or [] if isinstance(m, dict)]
    sources += [str(m.get("Source", "")) for m in mounts if m.get("Type") == "bind"]
    # A volume created on the fly with the local driver's options binds any host folder
    # (type=none,o=bind,device=/): upstream lets it through, the stand-in does not.
    if any(((m.get("VolumeOptions") or {}).get("DriverConfig") or {}).get("Options") for m in mounts):
        return "volume driver options (they can bind host folders) are not allowed"
    for source in sources:
        if not source.startswith("/"):
            continue  # a named volume, not a host path
        clean = posixpath.normpath(source)
        if not any(d == "/" or clean == d or clean.startswith(d + "/") for d in config.bind_mounts):
            return f"bind mount source {clean} is not allowed"
    return None


def pump(read: Callable[[int], bytes], sink: socket.socket) -> None:
    """Copy what ``read`` gives until it ends, then end the sink's sending side (half-close)."""
    try:
        while True:
            data = read(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


class Handler(http.server.BaseHTTPRequestHandler):
    config: Config
    protocol_version = "HTTP/1.1"
    server_version = "socket-proxy-standin"

    def log_message(self, format: str, *args: object) -> None:
        pass  # refusals are logged by refuse(); allowed requests are not worth a line each

    def refuse(self, status: int, reason: str) -> None:
        client = self.client_address[0]
        print(f"blocked {self.command} {self.path} from {client}: {reason}", file=sys.stderr, flush=True)
        self.send_error(status)
        self.close_connection = True

    def handle_any(self) -> None:
        self.close_connection = True
        config = self.config
        path = self.path.split("?", 1)[0]
        if not config.client_allowed(self.client_address[0]):
            return self.refuse(403, "forbidden IP")
        pattern = config.allow.get(self.command)
        if pattern is None:
            return self.refuse(405, "method not allowed")
        if not pattern.match(path):
            return self.refuse(403, "path not allowed")
        if "transfer-encoding" in self.headers:
            return self.refuse(411, "chunked request bodies are not relayed")
        length = int(self.headers.get("content-length") or 0)
        if not 0 <= length <= MAX_BODY:
            return self.refuse(413, "body too large")
        body = self.rfile.read(length)
        refusal = bind_mount_refusal(config, self.command, path, body)
        if refusal:
            return self.refuse(403, refusal)
        self.relay(body)

    def relay(self, body: bytes) -> None:
        upgrade = "upgrade" in self.headers.get("connection", "").lower()
        head = [f"{self.command} {self.path} HTTP/1.1"]
        head += [f"{k}: {v}" for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        head += [f"Upgrade: {self.headers['upgrade']}", "Connection: Upgrade"] if upgrade else ["Connection: close"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as engine:
            engine.connect(self.config.socket_path)
            engine.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
            response = b""
            while b"\r\n\r\n" not in response:
                data = engine.recv(65536)
                if not data or len(response) > MAX_HEAD:
                    return self.refuse(502, "the engine closed the connection")
                response += data
            status_line, _, rest = response.partition(b"\r\n")
            if b" 101 " not in status_line + b" ":  # not upgraded: the engine ends the response by closing
                rest = re.sub(rb"(?im)^connection:[^\r\n]*\r\n", b"", rest)
                response = status_line + b"\r\nConnection: close\r\n" + rest
            self.connection.sendall(response)
            back = threading.Thread(target=pump, args=(engine.recv, self.connection), daemon=True)
            back.start()
            if b" 101 " in status_line + b" ":
                pump(self.rfile.read1, engine)  # rfile first: it may hold bytes already read past the head
            back.join()


for _method in METHODS:
    setattr(Handler, f"do_{_method}", Handler.handle_any)


class Health(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def engine_answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as engine:
            engine.settimeout(5)
            engine.connect(path)
            engine.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            return engine.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def watchdog(config: Config) -> None:
    while True:
        time.sleep(config.watchdog_s)
        if not engine_answers(config.socket_path):
            print("watchdog: the Docker engine does not answer", file=sys.stderr, flush=True)
            if config.stop_on_watchdog:
                os._exit(1)


def main(argv: list[str]) -> int:
    config = Config(argv)
    Handler.config = config
    if not engine_answers(config.socket_path):
        print(f"socket-proxy: no Docker engine answers on {config.socket_path}", file=sys.stderr)
        return 1
    server = Server((config.listen_ip, config.port), Handler)
    if config.healthcheck:
        health = Server(("127.0.0.1", HEALTH_PORT), Health)
        threading.Thread(target=health.serve_forever, daemon=True).start()
    if config.watchdog_s > 0:
        threading.Thread(target=watchdog, args=(config,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"socket-proxy stand-in on {config.listen_ip}:{config.port}, engine {config.socket_path}", file=sys.stderr)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

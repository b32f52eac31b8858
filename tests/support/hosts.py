"""Several hosts on this one machine: network namespaces on a private bridge (issue 15).

A :class:`Network` is one test's LAN: a *switch* namespace holding a Linux bridge, and a namespace
per host, joined to the bridge by a veth pair (``eth0`` in the host, ``p-ROLE`` on the switch),
with an address in ``10.77.N.0/24``. Nothing is added to the machine's own namespace (no
interface, address, route or firewall rule): the machine's network, and Docker's iptables rules,
never see ours, and ours never meets another run's.

Processes run on a host through ``ip netns exec`` (:meth:`Host.exec`): same files, same user, only
the network is the host's. Faults are made where a real network makes them:

- :meth:`Network.cut` / :meth:`Network.mend`: the host's switch port down / up, a cable pulled: its
  ``eth0`` loses carrier, packets go nowhere and no error comes back;
- :meth:`Network.partition` / :meth:`Network.heal`: nft on the host drops every packet to or from
  the other host;
- :meth:`Network.degrade`: nft drops a share of the packets between two hosts (``numgen random``)
  and tc ``tbf`` limits the host's bandwidth both ways. This kernel has no ``netem``: latency comes
  from :mod:`.delay_proxy`;
- :meth:`Network.kill_host`: SIGKILL to every process on the host, the machine gone at once.

Every name carries its run: ``hermes-net-PID.START-N-ROLE`` (the test process's id and start time,
the subnet's third byte). A run that crashed leaves namespaces whose owner is gone: every new
network first reaps those (:func:`reap_stale`: it kills what still runs in them, then deletes
them), and never touches a namespace of a live owner, nor any name not of this form.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest
import redis

from .environment import REPO, missing, needs_mark
from .waiting import wait_until

PREFIX = "hermes-net-"
_NAME = re.compile(rf"^{PREFIX}(\d+)\.(\d+)-(\d+)-([a-z0-9]+)$")
SWITCH = "switch"
REDIS_PORT = 6379


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name before it may hold spaces


OWNER = f"{os.getpid()}.{_start_time(os.getpid())}"


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS...``; its output. Fails the test, quoting ``ip``, when it fails and ``check``."""
    return _run(["ip", *args], check)


def _run(command: list[str], check: bool = True) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """The names of every network namespace on the machine."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    """The processes whose network is ``netns``'s."""
    return [int(pid) for pid in ip("netns", "pids", netns, check=False).split()]


def remove_namespace(netns: str) -> None:
    """SIGKILL every process in ``netns``, then delete it (its veth ends and nft rules go with it)."""
    for _round in range(50):  # a process may fork while we kill its siblings
        pids = netns_pids(netns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    ip("netns", "delete", netns, check=False)


def reap_stale() -> list[str]:
    """Delete the namespaces of runs whose owner process is gone; the names reaped."""
    reaped = []
    for netns in namespaces():
        match = _NAME.match(netns)
        if match is None:
            continue
        pid, started = int(match[1]), int(match[2])
        if _start_time(pid) != started:  # no such process, or another one with a reused id
            remove_namespace(netns)
            reaped.append(netns)
    return reaped


def usable() -> None:
    """Skip (fail with CI=true) unless this machine can build networks: root, ``ip``, ``nft``, ``tc``."""
    if os.geteuid() != 0:
        missing("network namespaces need root")
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (the hosts scenarios need it)")


@dataclass(frozen=True)
class Host:
    """One host of a :class:`Network`: a namespace with ``eth0`` at ``address``."""

    role: str
    netns: str
    address: str

    @property
    def exec(self) -> list[str]:
        """The command prefix that runs a command on this host."""
        return ["ip", "netns", "exec", self.netns]

    @property
    def port(self) -> str:
        """Its port on the switch (the other end of its veth pair)."""
        return f"p-{self.role}"

    def run(self, *command: str, check: bool = True) -> str:
        return _run([*self.exec, *command], check)


class Network:
    """A switch and hosts on ``10.77.N.0/24``; :meth:`destroy` removes all of it (a context manager).

    Args:
        subnet: the third byte ``N`` (1-254); by default one no other network on this machine uses.
    """

    def __init__(self, subnet: int | None = None) -> None:
        if subnet is not None and not 1 <= subnet <= 254:
            raise ValueError(f"10.77.{subnet}.0/24 is not a subnet: the third byte must be 1-254")
        self.subnet = subnet or 0  # chosen by create() unless given
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []

    def _name(self, role: str) -> str:
        return f"{PREFIX}{OWNER}-{self.subnet}-{role}"

    @property
    def switch(self) -> str:
        """The switch's namespace."""
        return self._name(SWITCH)

    def create(self) -> Network:
        """Check the machine can, reap what crashed runs left, make the switch."""
        needs_mark("chaos", "network namespaces")
        usable()
        reap_stale()
        self.subnet = self.subnet or _free_subnet()
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        return self

    def _add_namespace(self, netns: str) -> None:
        done = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            missing(f"cannot create a network namespace: {done.stderr.strip()}")
        self._made.append(netns)
        ip("-n", netns, "link", "set", "lo", "up")

    def add_host(self, role: str) -> Host:
        """A new host on the switch, at the next address (``.2``, ``.3``, ...)."""
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", role) or role == SWITCH or role in self.hosts:
            raise ValueError(f"host role {role!r}: 1-12 lowercase letters and digits, new, not {SWITCH!r}")
        host = Host(role, self._name(role), f"10.77.{self.subnet}.{len(self.hosts) + 2}")
        self._add_namespace(host.netns)
        ip("-n", self.switch, "link", "add", host.port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")
        self.hosts[role] = host
        return host

    # Faults -----------------------------------------------------------------------------------

    def cut(self, host: Host) -> None:
        """Pull the host's cable: its switch port goes down."""
        ip("-n", self.switch, "link", "set", host.port, "down")

    def mend(self, host: Host) -> None:
        ip("-n", self.switch, "link", "set", host.port, "up")

    def partition(self, host: Host, other: Host) -> None:
        """Drop every packet between ``host`` and ``other`` (on ``host``, both ways) until :meth:`heal`."""
        self._filter(host, f"ip daddr {other.address} drop", f"ip saddr {other.address} drop")

    def degrade(self, host: Host, other: Host, loss_percent: int, rate: str) -> None:
        """Drop ``loss_percent`` % of the packets between ``host`` and ``other`` (each way), and
        limit ``host``'s link to ``rate`` (tc's units: ``8mbit``) each way, until :meth:`heal`."""
        if not 0 <= loss_percent <= 100:
            raise ValueError(f"a loss of {loss_percent} % is not a share of packets")
        share = f"numgen random mod 100 < {loss_percent} drop"
        self._filter(host, f"ip daddr {other.address} {share}", f"ip saddr {other.address} {share}")
        self.limit(host, rate)

    def limit(self, host: Host, rate: str) -> None:
        """Limit ``host``'s link to ``rate`` each way (tbf on both ends of its veth pair)."""
        # A burst of 32 KiB and a queue of up to 1 s: TCP finds the rate, little is dropped.
        tbf = ["root", "tbf", "rate", rate, "burst", "32kb", "latency", "1s"]
        ip_tc = [("-n", host.netns, "eth0"), ("-n", self.switch, host.port)]
        for flag, netns, dev in ip_tc:
            _run(["tc", flag, netns, "qdisc", "replace", "dev", dev, *tbf])

    def heal(self, host: Host) -> None:
        """Take away what :meth:`partition`, :meth:`degrade` and :meth:`limit` did to ``host``."""
        host.run("nft", "delete", "table", "inet", "hermes_faults", check=False)
        for flag, netns, dev in [("-n", host.netns, "eth0"), ("-n", self.switch, host.port)]:
            _run(["tc", flag, netns, "qdisc", "del", "dev", dev, "root"], check=False)

    def _filter(self, host: Host, outgoing: str, incoming: str) -> None:
        rules = (f"table inet hermes_faults {{\n"
                 f"  chain out {{ type filter hook output priority 0; {outgoing}; }}\n"
                 f"  chain in {{ type filter hook input priority 0; {incoming}; }}\n}}\n")  # fmt: skip
        host.run("nft", "delete", "table", "inet", "hermes_faults", check=False)
        done = subprocess.run([*host.exec, "nft", "-f", "-"], input=rules, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            pytest.fail(f"nft on {host.role} refused the rules: {done.stderr.strip()}\n{rules}")

    def kill_host(self, host: Host) -> list[int]:
        """SIGKILL every process on ``host`` at once (as a power cut would); the ids killed."""
        pids = netns_pids(host.netns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def destroy(self) -> None:
        """Kill every process on every host and delete the namespaces, the switch last."""
        for netns in reversed(self._made):
            remove_namespace(netns)
        self._made.clear()

    def __enter__(self) -> Network:
        try:
            return self.create()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.destroy()


def _free_subnet() -> int:
    """A third byte no other hermes network on this machine uses now."""
    used = {int(match[3]) for netns in namespaces() if (match := _NAME.match(netns))}
    free = sorted(set(range(1, 255)) - used)
    if not free:
        pytest.fail("every 10.77.N.0/24 is taken by a hermes network: reap them (tests/support/hosts.py)")
    return random.choice(free)


# Services on hosts ------------------------------------------------------------------------------


class HostRedis:
    """redis-server on a host: TCP on the host's address for the other hosts, a unix socket for the test.

    The test itself runs outside every host; it reads Redis (the registry, the checker's leftovers)
    through the socket file, which no fault of the virtual network touches.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        # Socket paths are short (108 bytes): a directory of its own under /tmp.
        self.workdir = Path(tempfile.mkdtemp(prefix="hermes-net-redis-"))
        self.socket = self.workdir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, address: str | None = None, port: int = REDIS_PORT) -> str:
        """The URL other hosts use (``address``/``port``: a proxy in front of it)."""
        return f"redis://{address or self.host.address}:{port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=10)

    def start(self) -> HostRedis:
        needs_mark("cluster", "a redis-server")
        if shutil.which("redis-server") is None:
            missing("redis-server is not installed (apt-get install redis-server)")
        args = ["redis-server", "--bind", self.host.address, "--port", str(REDIS_PORT), "--protected-mode", "no",
                "--unixsocket", str(self.socket), "--unixsocketperm", "700", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "no"]  # fmt: skip
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen([*self.host.exec, *args], stdout=log, stderr=subprocess.STDOUT)

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                log_text = (self.workdir / "redis.log").read_text(errors="replace")
                pytest.fail(f"redis-server on {self.host.role} exited with {self.process.returncode}: {log_text}")
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        wait_until(answers, 30, 0.05, f"redis-server on {self.host.role}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_delay_proxy(host: Host, listen_port: int, target: str, target_port: int, delay_ms: int,
                      log_path: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    """:mod:`.delay_proxy` on ``host`` (``host.address:listen_port`` to ``target:target_port``);
    returns once it listens."""
    script = REPO / "tests" / "support" / "delay_proxy.py"
    command = [*host.exec, sys.executable, str(script), host.address, str(listen_port), target, str(target_port),
               str(delay_ms)]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the delay proxy on {host.role} exited: {log_path.read_text(errors='replace')}")
        return "listening on" in log_path.read_text(errors="replace")

    wait_until(listening, 30, 0.05, f"the delay proxy on {host.role}")
    return process

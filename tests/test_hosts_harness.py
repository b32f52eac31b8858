"""The hosts harness (tests/support/hosts.py) does what the scenarios rely on, and cleans up after runs.

Real namespaces, a real bridge, real nft and tc: each check is a TCP connection made from one host
to another. Needs root: skipped with the reason without, failed with CI=true.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from .support.hosts import OWNER, PREFIX, Host, Network, ip, namespaces, netns_pids, reap_stale
from .support.waiting import wait_until

pytestmark = pytest.mark.chaos

PORT = 7070
# Accepts connections on the host's address for as long as it runs (one line of Python).
LISTENER = ("import socket,sys; s=socket.create_server((sys.argv[1], int(sys.argv[2]))); "
            "[s.accept()[0].close() for _ in iter(int, 1)]")  # fmt: skip


@pytest.fixture
def pair() -> Iterator[tuple[Network, Host, Host]]:
    with Network() as network:
        a, b = network.add_host("a"), network.add_host("b")
        listener = subprocess.Popen([*b.exec, sys.executable, "-c", LISTENER, b.address, str(PORT)])
        try:
            wait_until(lambda: _connects(a, b), 10, 0.1, "the listener on b")
            yield network, a, b
        finally:
            listener.kill()
            listener.wait(timeout=10)


def _connects(host: Host, other: Host) -> bool:
    """Whether ``host`` opens a TCP connection to ``other`` within a second."""
    probe = f"import socket; socket.create_connection(({other.address!r}, {PORT}), timeout=1)"
    return subprocess.run([*host.exec, sys.executable, "-c", probe], capture_output=True, timeout=30).returncode == 0


def test_hosts_reach_each_other_and_a_cut_or_a_partition_stops_it(pair: tuple[Network, Host, Host]) -> None:
    network, a, b = pair
    network.cut(b)
    assert not _connects(a, b)
    network.mend(b)
    wait_until(lambda: _connects(a, b), 10, 0.1, "b back after its cable is plugged in")
    network.partition(a, b)
    assert not _connects(a, b)
    network.heal(a)
    assert _connects(a, b)


def test_nothing_is_added_to_the_machine_s_own_network(pair: tuple[Network, Host, Host]) -> None:
    network, a, b = pair
    links, addresses, routes = ip("-o", "link", "show"), ip("-4", "-o", "addr", "show"), ip("route", "show")
    assert f"10.77.{network.subnet}." not in addresses + routes
    assert not any(f" {name}@" in links or f" {name}:" in links for name in (a.port, b.port))


def test_a_narrow_link_is_narrow_both_ways_and_healed(pair: tuple[Network, Host, Host]) -> None:
    network, a, b = pair
    network.degrade(a, b, 0, "1mbit")
    shown = a.run("tc", "qdisc", "show", "dev", "eth0") + ip("-n", network.switch, "link", "show", a.port)
    assert "tbf" in shown and "rate 1Mbit" in shown and "nft" not in shown
    assert "numgen random mod 100 < 0 drop" in a.run("nft", "list", "ruleset")
    network.heal(a)
    assert "tbf" not in a.run("tc", "qdisc", "show", "dev", "eth0") and "hermes_faults" not in a.run("nft", "list",
                                                                                                     "ruleset")


def test_killing_a_host_kills_every_process_on_it(pair: tuple[Network, Host, Host]) -> None:
    network, a, _b = pair
    sleepers = [subprocess.Popen([*a.exec, "sleep", "60"]) for _ in range(2)]
    wait_until(lambda: len(netns_pids(a.netns)) == 2, 10, 0.05, "both sleepers on a")
    assert sorted(network.kill_host(a)) == sorted(p.pid for p in sleepers)
    assert [p.wait(timeout=10) for p in sleepers] == [-9, -9]


def test_absurd_roles_and_losses_are_refused() -> None:
    with Network() as network:
        for role in ["", "Bad Role", "switch", "a" * 13, "a/../b"]:
            with pytest.raises(ValueError, match="host role"):
                network.add_host(role)
        a, b = network.add_host("a"), network.add_host("b")
        for loss in (-1, 101):
            with pytest.raises(ValueError, match="not a share of packets"):
                network.degrade(a, b, loss, "1mbit")
    for subnet in (-1, 255, 1000):
        with pytest.raises(ValueError, match="not a subnet"):
            Network(subnet)


def test_a_crashed_run_s_namespaces_are_reaped_and_nothing_else() -> None:
    dead = f"{PREFIX}999999999.1-250-w1"  # no process has that id
    alive = f"{PREFIX}{OWNER}-251-w1"  # this run's
    foreign = "hermes-harness-test-not-ours"
    for name in (dead, alive, foreign):
        ip("netns", "add", name)
    try:
        sleeper = subprocess.Popen(["ip", "netns", "exec", dead, "sleep", "60"])
        wait_until(lambda: netns_pids(dead), 10, 0.05, "a process left in the crashed run's namespace")
        started = time.monotonic()
        assert dead in reap_stale()
        assert sleeper.wait(timeout=10) == -9 and time.monotonic() - started < 10
        left = namespaces()
        assert dead not in left and alive in left and foreign in left
    finally:
        for name in (dead, alive, foreign):
            with contextlib.suppress(BaseException):
                ip("netns", "delete", name, check=False)


def test_without_root_the_scenarios_skip_with_the_reason_and_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="network namespaces need root"):
        Network().create()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but network namespaces need root"):
        Network().create()

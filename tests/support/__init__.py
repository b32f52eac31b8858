"""What the tests share that is not a fixture: plain helpers, imported by name.

- :mod:`.waiting`: ``wait_until``, the one way a test waits for something to become true.
- :mod:`.environment`: where the repository is, free ports, ``missing`` (skip here, fail in CI).
- :mod:`.redis_server`: :class:`RedisServer`, the one private redis-server harness.
- :mod:`.processes`: ``hermes worker`` and ``hermes ...`` as real processes, and the registry.
- :mod:`.inputs`: input files, records, and the raw-chunk pipeline run in-process.
- :mod:`.timing`: ``cpu_seconds``, CPU time of a call stopped at a limit (the linear-time tests).
- :mod:`.checker`: ``check``, what a batch's output and Redis say about its input (every chaos test).
- :mod:`.hosts`: several hosts on this machine (network namespaces), and the faults of their network.
- :mod:`.delay_proxy`: a TCP proxy that adds latency (this kernel has no ``netem``).
- :mod:`.leaks`: the secrets tests' markers, DEBUG environment, `hermes` runs and every log as one text.

Fixtures live in the ``tests/fixtures_*.py`` plugins (registered in ``tests/conftest.py``);
no test module imports another test module or a conftest.
"""

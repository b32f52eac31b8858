"""Secrets and private data (issue 11, class 5): what Hermes prints, logs and leaves on disk.

- One redaction (``hermes_worker.redact``) masks passwords in every URL shape, secret-named
  values, ``Authorization`` credentials and Hermes' own configured secrets, in linear time.
- ``hermes doctor``, ``status``, ``workers``, ``flower`` and every notice never print a password.
- A server that refuses our credentials (wrong password, no password, ACL denial, a certificate
  that does not verify) is a configuration error: exit 2 naming it, never a silent fallback;
  a worker stops at start-up saying so.
- No prompt, no id and no password reaches any log: the file log, a worker's output, the
  cluster log, ``hermes log`` and ``hermes debug``, in-process and on real workers. Secrets
  already in old logs are masked when read.
- HERMES_HOME is 0700 and its files 0600 whatever the umask.
- A worker's metrics listen on 127.0.0.1 unless told otherwise.
- Celery's ``inspect conf`` and Flower's API show no password, whichever form the URL has.

The rule for logs: no input-derived text (prompts, ids, item error messages, which quote
input) in any log, only line and chunk numbers, counts, error codes and what the
infrastructure said; a user's own terminal (the batch summary on stderr) may show item errors.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from .support.environment import free_port
from .support.processes import WorkerProcess, run_hermes, start_flower_process, start_worker_process
from .support.redis_server import RedisServer, make_tls_files
from .support.timing import cpu_seconds
from .support.waiting import wait_until

RedisFactory = Callable[..., RedisServer]
PYTHON = sys.executable


# Helpers ---------------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    """A marker no other text in the run contains, shaped like a real secret."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with its own HERMES_HOME, no HERMES_* from the caller, DEBUG logging."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_")}
    return clean | {
        "HERMES_HOME": str(tmp_path / "home"),
        "HERMES_BROKER_URL": "redis://127.0.0.1:1/0",
        "HERMES_ISOLATION": "local",
        "HERMES_LOG_LEVEL": "DEBUG",
        "HERMES_HEARTBEAT": "1",
        "HERMES_CONCURRENCY": "1",
    }


def hermes(env: dict[str, str], *args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run the real `hermes ARGS...` with ``env`` (plus ``extra`` variables)."""
    code, out, err = run_hermes(list(args), env | extra, Path(env["HERMES_HOME"]).parent, timeout=timeout)

    def text(data: bytes) -> str:  # as subprocess.run(text=True, errors="replace") decodes
        return data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")

    return subprocess.CompletedProcess([PYTHON, "-m", "hermes_producer", *args], code, text(out), text(err))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `hermes worker` processes (output to a file); all stopped after the test."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], name: str, *args: str) -> WorkerProcess:
        worker = start_worker_process(env, tmp_path / f"worker-{name}.out", name, "-c", "1", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.halt()


def registered(client: redis.Redis, worker: WorkerProcess, node: str, timeout: float = 90) -> dict[str, Any]:
    """Wait until ``node`` is ready in the registry; fail with the worker's output if it exits."""

    def entry() -> dict[str, Any] | None:
        assert worker.process.poll() is None, f"worker {node} exited:\n{worker.log[-3000:]}"
        raw = client.get(f"hermes:worker:{node}")
        found = json.loads(raw) if raw else None
        # Ready when it lists its queues: a starting worker's name claim lists none.
        return found if found and found.get("queues") else None

    found: dict[str, Any] = wait_until(entry, timeout, 0.1, f"worker {node} to be ready")
    return found


def everything_logged(env: dict[str, str], client: redis.Redis | None, extra: list[Path] = ()) -> str:  # type: ignore[assignment]
    """Every log there is, as one text: the files under HERMES_HOME/log, the given outputs
    (workers'), the raw cluster log stream, and what `hermes log` and `hermes debug` print."""
    parts = [path.read_text("utf-8", "replace") for path in sorted((Path(env["HERMES_HOME"]) / "log").glob("*"))]
    parts += [path.read_text("utf-8", "replace") for path in extra]
    if client is not None:
        parts += [json.dumps({k.decode(): v.decode() for k, v in fields.items()})
                  for _id, fields in client.xrange("hermes:events")]  # fmt: skip
    for command in (["log", "-n", "100000"], ["debug", "-n", "100000"], ["debug", "-n", "100000", "--json"]):
        shown = hermes(env, *command)
        assert shown.returncode == 0, shown.stderr
        parts += [shown.stdout, shown.stderr]
    return "\n".join(parts)


def listening(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(".".join(str(b) for b in raw[::-1]))
                else:
                    found.add("::" if raw == bytes(16) else raw.hex())
    return found


# One redaction ---------------------------------------------------------------------------------


SHAPES = [
    # (text, what must vanish, what must stay)
    ("redis://:S3CRET@10.0.0.5:6379/0", "S3CRET", "redis://:***@10.0.0.5:6379/0"),
    ("redis://hermes:S3CRET@10.0.0.5:6379/0", "S3CRET", "hermes:***@10.0.0.5"),
    ("redis://10.0.0.5:6379/0?password=S3CRET", "S3CRET", "?password=***"),
    ("rediss://:S3CRET@h:6380/0?ssl_cert_reqs=required", "S3CRET", "ssl_cert_reqs=required"),
    ("rediss://h:6380/0?ssl_ca_certs=/ca.pem&password=S3CRET", "S3CRET", "ssl_ca_certs=/ca.pem"),
    ("sentinel://:S3CRET@s1:26379;sentinel://:S3CRET@s2:26379", "S3CRET", "@s2:26379"),
    ("amqp://hermes:S3CRET@mq:5672//", "S3CRET", "@mq:5672//"),
    ("unix://:S3CRET@/run/redis.sock?db=0", "S3CRET", "/run/redis.sock"),
    ("unix:///run/redis.sock?password=S3CRET&db=0", "S3CRET", "&db=0"),
    ("tcp://docker:S3CRET@dockerhost:2376", "S3CRET", "@dockerhost:2376"),
    ("https://S3CRETTOKEN@github.com/org/repo", "S3CRETTOKEN", "@github.com"),
    ("Error 111 connecting to redis://:S3CRET@h:6379/0. Refused.", "S3CRET", "Error 111 connecting to"),
    ("Authorization: Basic b3BzOlMzQ1JFVA==", "b3BzOlMzQ1JFVA", "Authorization: Basic ***"),
    ("authorization: Bearer S3CRET.jwt.value", "S3CRET", "Bearer ***"),
    ("curl -H 'Authorization: Bearer S3CRETS3CRET'", "S3CRET", "curl -H"),
    ("HERMES_FLOWER_PASSWORD=S3CRET HERMES_FLOWER_USER=ops", "S3CRET", "HERMES_FLOWER_USER=ops"),
    ("FLOWER_BASIC_AUTH=ops:S3CRET", "S3CRET", "FLOWER_BASIC_AUTH="),
    ("OPENAI_API_KEY=sk-S3CRET AWS_SECRET_ACCESS_KEY=S3CRET2 GITHUB_TOKEN=S3CRET3", "S3CRET", "OPENAI_API_KEY"),
    ("redis-server --requirepass S3CRET --port 1", "S3CRET", "--port 1"),
    ("flower --basic-auth=ops:S3CRET", "S3CRET", "flower --basic-auth="),
    ("{'password': 'S3 CRET', 'port': 6379}", "S3 CRET", "'port': 6379"),
    ('{"password": "S3CRET", "db": 0}', "S3CRET", '"db": 0'),
    ('{"r": "{\\"token\\": \\"S3CRET\\"}"}', "S3CRET", '\\"token\\"'),
    ("password: S3CRET", "S3CRET", "password: ***"),
]


@pytest.mark.parametrize(("text", "secret", "kept"), SHAPES, ids=[s[0][:40] for s in SHAPES])
def test_redact_masks_a_secret_in_every_shape_and_keeps_the_rest(text: str, secret: str, kept: str) -> None:
    """Given a text holding a secret in one of the shapes libraries and people write them,
    when it is redacted, the secret is gone and what helps a reader (host, port, names) stays;
    redacting again changes nothing."""
    from hermes_worker.redact import redact

    masked = redact(text)

    assert secret not in masked and kept in masked, masked
    assert redact(masked) == masked


@pytest.mark.parametrize(
    "text",
    [
        "Docker probe passed: using container processing (image sha256:abc)",
        "cannot read input tokens.jsonl: No such file or directory",
        "WRONGPASS invalid username-password pair or user is disabled.",
        "chunk 3: 1,024 ok, 0 failed in 12.5 ms",
        "queue hermes.local 0 waiting; author: Ada; keyboard=us",
        "HERMES_CONTAINER_LABELS='team' is invalid: 'team' is not KEY=VALUE",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    """Messages without secrets pass unchanged (no "passed:" or file name taken for a password)."""
    from hermes_worker.redact import redact

    assert redact(text) == text


def test_the_configured_secrets_are_masked_in_any_shape(env: dict[str, str]) -> None:
    """Given settings whose URLs and Flower password hold secrets, once the settings are read
    those exact values are masked wherever they turn up, even outside any recognisable shape."""
    from hermes_worker.redact import redact
    from hermes_worker.settings import Settings

    broker_pw, backend_pw, flower_pw = unique("bpw"), unique("rpw@x"), unique("fpw")
    Settings.from_env(env | {
        "HERMES_BROKER_URL": f"redis://:{broker_pw}@h/0",
        "HERMES_RESULT_BACKEND": "redis://h/1?password=" + backend_pw.replace("@", "%40"),
        "HERMES_FLOWER_PASSWORD": flower_pw,
    })  # fmt: skip

    text = f"kombu said ({broker_pw}) then [{backend_pw}] and <{flower_pw}>"
    assert redact(text) == "kombu said (***) then [***] and <***>"


def test_redaction_runs_in_linear_time() -> None:
    """Given adversarial texts (long runs of URL schemes, '@', name characters, secret words,
    separators, quotes, spaces), redacting 256 KiB takes at most 4 x the size ratio times 16 KiB
    (64 x, in CPU time): a linear pass takes about 16 x, a quadratic one 256 x. A large run over
    the bound is measured again with its small run, up to three rounds (the machine is shared).
    A quadratic pass fails in seconds: 16 KiB may take 0.25 s (a linear one takes about 10 ms),
    a large run is stopped at twice its bound, and the test stops at the second slow text."""
    from hermes_worker.redact import redact

    units = ["a://", "a@", "x", " ", "password", "password=", "token.", "--password ", "Basic A",
             "'password' ", "redis://:p@h/0?password=x&", "key_", "ab+.-://"]  # fmt: skip
    slow: list[str] = []
    for unit in units:
        small, large = unit * (16 * 1024 // len(unit)), unit * (256 * 1024 // len(unit))
        rounds = []
        for _ in range(3):
            small_s = cpu_seconds(lambda: redact(small), 3, limit_s=0.25)  # noqa: B023
            if small_s == float("inf"):
                rounds.append((small_s, small_s, small_s))
                break
            allowed = 64 * max(small_s, 1e-4)
            large_s = cpu_seconds(lambda: redact(large), 1, limit_s=2 * allowed)  # noqa: B023
            rounds.append((large_s / allowed, small_s, large_s))
            if large_s <= allowed or large_s == float("inf"):
                break
        over, small_s, large_s = min(rounds)
        if small_s == float("inf"):
            slow.append(f"{unit!r}: more than 0.25 s for 16 KiB")
        elif over > 1:
            slow.append(f"{unit!r}: 16 KiB {small_s * 1000:.2f} ms, 256 KiB {large_s * 1000:.1f} ms")
        if len(slow) == 2:
            break
    assert not slow, slow


def test_the_log_records_command_and_option_names_never_values(env: dict[str, str]) -> None:
    """Given `hermes run --prompt SECRET` (in-process, DEBUG logging), the cli.invoked record
    names the command and its options, numbers and choices as given, the prompt only by size."""
    secret = unique("sk-LIVE-SECRET")

    done = hermes(env, "run", "--prompt", secret, "--isolation", "local", "--max-validation", "2")

    assert done.returncode == 0, done.stderr
    log = (Path(env["HERMES_HOME"]) / "log" / "hermes.log").read_text()
    assert secret not in log
    invoked = [json.loads(line) for line in log.splitlines() if '"cli.invoked"' in line]
    assert invoked[0]["argv"] == ["run", "--prompt", f"<{len(secret)} chars>", "--isolation", "local",
                                  "--max-validation", "2"]  # fmt: skip


# Printers ------------------------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
def test_cluster_commands_print_no_password(
    redis_factory: RedisFactory, env: dict[str, str], workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Given a Redis with a password and a worker whose DOCKER_HOST carries credentials,
    `hermes doctor`, `status`, `workers` (text and JSON) and the `hermes flower` notice show the
    URLs with the password masked, and the worker's probe reason without the Docker credentials;
    the worker's own output and log hold neither."""
    password, docker_password = unique("redis-pw"), unique("docker-pw")
    server = redis_factory(password=password)
    cluster = env | {"HERMES_BROKER_URL": server.url()}
    worker = workers(cluster | {"DOCKER_HOST": f"tcp://probe:{docker_password}@127.0.0.1:1"}, "w1", "--mode", "auto")
    entry = registered(server.client(), worker, "local@w1")
    assert "tcp://probe:***@127.0.0.1:1" in json.dumps(entry) and docker_password not in json.dumps(entry)

    shown = [hermes(cluster, *command) for command in (["doctor"], ["status"], ["status", "--json"], ["workers"],
                                                       ["workers", "--json"])]  # fmt: skip
    flower = subprocess.Popen([PYTHON, "-m", "hermes_producer", "flower", "--port", str(free_port())],
                              env=cluster | {"HERMES_FLOWER_USER": "ops", "HERMES_FLOWER_PASSWORD": unique("fpw")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert flower.stderr is not None
        notice = flower.stderr.readline()
    finally:
        flower.terminate()
        flower.communicate(timeout=20)

    assert "Flower on http://127.0.0.1:" in notice and f"{server.url().replace(password, '***')}" in notice
    doctor = shown[0].stdout
    assert "[ok  ] broker redis://:***@127.0.0.1:" in doctor and "worker local@w1 is local" in doctor
    assert "tcp://probe:***@127.0.0.1:1" in doctor
    for done in shown:
        assert done.returncode in (0, 1), done.stderr
        assert password not in done.stdout + done.stderr and docker_password not in done.stdout + done.stderr
    assert "tcp://probe:***@127.0.0.1:1" in shown[4].stdout  # workers --json: the probe reason, masked
    logged = everything_logged(cluster, server.client(), [worker.log_path])
    assert password not in logged + notice and docker_password not in logged


# Refused credentials ---------------------------------------------------------------------------------


@pytest.fixture
def secured(redis_factory: RedisFactory) -> tuple[RedisServer, str]:
    password = unique("right-pw")
    server = redis_factory(password=password)
    # An ACL user who may log in but run nothing: "permission denied", not "not answering".
    server.client().execute_command("ACL", "SETUSER", "mute", "on", ">mute-pw", "~*", "-@all")
    return server, password


REFUSALS = {
    "wrong password": ("redis://:WRONG-pw@127.0.0.1:{port}/0", {}, "authentication failed"),
    "wrong password, query form": ("redis://127.0.0.1:{port}/0?password=WRONG-pw", {}, "authentication failed"),
    "no password": ("redis://127.0.0.1:{port}/0", {}, "authentication failed"),
    "wrong user": ("redis://nobody:WRONG-pw@127.0.0.1:{port}/0", {}, "authentication failed"),
    "ACL denies": ("redis://mute:mute-pw@127.0.0.1:{port}/0", {}, "permission denied"),
    # The broker alone is wrong (checked through kombu), the result Redis is right.
    "broker only": (
        "redis://:WRONG-pw@127.0.0.1:{port}/1",
        {"HERMES_RESULT_BACKEND": "{right}"},
        "authentication failed",
    ),
}


@pytest.mark.cluster
@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refusal_is_a_configuration_error_never_a_fallback(
    case: str, secured: tuple[RedisServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Given a Redis that refuses the credentials in the URL, `hermes run` and `hermes batch`
    (without --no-fallback) exit 2 naming the URL (password masked) and the reason, process
    nothing in-process, write no output, and print no password, right or wrong."""
    server, password = secured
    template, extra, reason = REFUSALS[case]
    url = template.format(port=server.port)
    settings = env | {"HERMES_BROKER_URL": url} | {k: v.format(right=server.url()) for k, v in extra.items()}
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": 1, "prompt": "hello"}\n')

    ran = hermes(settings, "run", "--prompt", "hello")
    batch = hermes(settings, "batch", str(src), "-o", str(out))

    for done in (ran, batch):
        assert done.returncode == 2, (done.returncode, done.stderr)
        assert reason in done.stderr and "127.0.0.1" in done.stderr
        assert "in-process" not in done.stderr and done.stdout == ""
        assert password not in done.stderr and "WRONG-pw" not in done.stderr and "mute-pw" not in done.stderr
    partial = Path(f"{out}.partial")
    assert not out.exists() and (not partial.exists() or partial.stat().st_size == 0)


UNREADABLE = ["redis://:pieceA/pieceB@127.0.0.1:6379/0", "redis://:pieceA#pieceB@127.0.0.1/0",
              "redis://:pieceA?pieceB@127.0.0.1/0", "redis://:pieceApieceB@127.0.0.1:port/0"]  # fmt: skip


@pytest.mark.parametrize("url", UNREADABLE)
def test_a_url_that_cannot_be_read_is_refused_without_quoting_the_password(url: str, env: dict[str, str]) -> None:
    """Given a broker URL whose password holds an unencoded '/', '#' or '?' (or whose port is
    not a number), every command exits 2 naming the variable and the fix, before connecting,
    with no traceback and no piece of the password (the parser's own error quotes one)."""
    done = hermes(env | {"HERMES_BROKER_URL": url}, "run", "--prompt", "hello")

    assert done.returncode == 2 and "HERMES_BROKER_URL=" in done.stderr and "%2F" in done.stderr
    assert "pieceA" not in done.stderr and "pieceB" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.cluster
def test_a_broker_that_is_not_answering_still_falls_back(env: dict[str, str]) -> None:
    """Regression guard: nothing listening at the broker URL is not a refusal: the embedded
    default still runs in-process with a notice, exit 0."""
    done = hermes(env, "run", "--prompt", "hello")
    assert done.returncode == 0 and done.stdout == "hello\n" and "is not answering" in done.stderr


@pytest.mark.cluster
def test_a_certificate_that_does_not_verify_is_a_configuration_error(
    redis_factory: RedisFactory, env: dict[str, str], tmp_path: Path
) -> None:
    """Given a TLS-only Redis whose certificate our client cannot verify (no CA given),
    `hermes run` exits 2 with "TLS certificate verification failed", never in-process."""
    password = unique("tls-pw")
    server = redis_factory(password=password, tls=make_tls_files(tmp_path / "tls"))
    unverifiable = server.url().split("?")[0]

    done = hermes(env | {"HERMES_BROKER_URL": unverifiable}, "run", "--prompt", "hello")

    assert done.returncode == 2, done.stderr
    assert "TLS certificate verification failed" in done.stderr and done.stdout == ""
    assert password not in done.stderr


@pytest.mark.cluster
def test_a_worker_with_a_wrong_password_stops_at_start(
    secured: tuple[RedisServer, str], env: dict[str, str], workers: Callable[..., WorkerProcess]
) -> None:
    """Given a wrong password, `hermes worker` exits 2 at once saying authentication failed
    (instead of retrying for ever as if Redis were down), the password masked."""
    server, password = secured
    wrong = f"redis://:WRONG-pw@127.0.0.1:{server.port}/0"
    worker = workers(env | {"HERMES_BROKER_URL": wrong}, "bad", "--mode", "local")

    assert worker.process.wait(timeout=60) == 2
    assert "authentication failed" in worker.log and "redis://:***@127.0.0.1" in worker.log
    assert "WRONG-pw" not in worker.log and password not in worker.log


# Logs -------------------------------------------------------------------------------------------------


def write_marked_batch(path: Path, marker: str, count: int = 40) -> None:
    """Prompts and ids that carry ``marker``; a reused id (its error quotes the id), a prompt
    of the wrong type with a marked id, and a broken line holding the marker."""
    lines = [json.dumps({"id": f"{marker}-{i}", "prompt": f"private prompt {marker} no. {i}  "}) for i in range(count)]
    lines += [json.dumps({"id": f"{marker}-0", "prompt": f"again {marker}"}),
              json.dumps({"id": f"{marker}-bad", "prompt": 5}),
              f'{{"id": "{marker}-broken", "prompt": "{marker}']  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.cluster
@pytest.mark.slow
def test_no_prompt_id_or_password_reaches_any_log(
    redis_factory: RedisFactory, env: dict[str, str], workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Given a password-protected Redis, DEBUG logging everywhere and a batch whose prompts and
    ids carry a unique marker (with items whose errors quote their ids),
    when the batch, `hermes run --prompt` and a task run in-process and then on a real worker
    (at Celery's DEBUG level),
    then the output holds the marker and no log does: not the files under HERMES_HOME/log,
    not the worker's output, not the cluster log stream, not `hermes log` or `hermes debug`;
    nor does any of them hold the password."""
    marker, password = unique("sk-LIVE-MARK"), unique("redis-pw")
    server = redis_factory(password=password)
    src = tmp_path / "in.jsonl"
    write_marked_batch(src, marker)

    # In-process first (the broker URL answers nothing), then on a real local worker.
    alone = hermes(env, "batch", str(src), "-o", str(tmp_path / "alone.jsonl"))
    run_alone = hermes(env, "run", "--prompt", f"one {marker}")
    cluster = env | {"HERMES_BROKER_URL": server.url(), "HERMES_NO_FALLBACK": "1"}
    worker = workers(cluster, "w1", "--mode", "local", "-l", "debug")
    registered(server.client(), worker, "local@w1")
    on_worker = hermes(cluster, "batch", str(src), "-o", str(tmp_path / "worker.jsonl"), "--chunk-size", "7")
    run_worker = hermes(cluster, "run", "--prompt", f"two {marker}")
    scheduled = hermes(cluster, "task", "--prompt", f"three {marker}")
    queued = hermes(cluster, "queue", "--all")

    for done in (alone, on_worker):
        assert done.returncode == 1, done.stderr  # the reused id and the bad lines are item errors
    for done in (run_alone, run_worker, scheduled, queued):
        assert done.returncode == 0, done.stderr
    records = (tmp_path / "worker.jsonl").read_text()
    assert records.count(marker) >= 40 and '"worker":"local@w1"' in records and "duplicate_id" in records
    assert (tmp_path / "alone.jsonl").read_text().count(marker) >= 40

    logged = everything_logged(cluster, server.client(), [worker.log_path])
    assert "batch.finished" in logged and "chunk.started" in logged and "Task hermes.normalize_chunk" in logged
    assert marker not in logged
    assert password not in logged


@pytest.mark.cluster
def test_secrets_in_old_logs_are_masked_when_read(env: dict[str, str], redis_server: Any) -> None:
    """Given a log file and a cluster log written before redaction, holding a password URL
    and a secret-named field, `hermes log` and `hermes debug --json` show them masked."""
    password = unique("old-pw")
    log_dir = Path(env["HERMES_HOME"]) / "log"
    log_dir.mkdir(parents=True)
    message = f"Redis at redis://:{password}@db:6379/0 is not answering"
    old = {"ts": "2026-01-01T00:00:00.000Z", "level": "WARNING", "event": "dispatch.in_process", "pid": 1,
           "message": message, "flower_password": password}  # fmt: skip
    (log_dir / "hermes.log").write_text(json.dumps(old) + "\n")
    client = redis_server.client()
    client.flushall()
    client.xadd("hermes:events", {"r": json.dumps(old | {"ts": "2026-01-01T00:00:01.000Z", "worker": "old@w"})})
    cluster = env | {"HERMES_BROKER_URL": redis_server.url()}

    shown = [hermes(cluster, "log"), hermes(cluster, "debug", "--json")]

    for done in shown:
        assert done.returncode == 0, done.stderr
        assert password not in done.stdout and done.stdout.count("redis://:***@db:6379/0") == 2, done.stdout


# Files on disk -----------------------------------------------------------------------------------------


OPEN_AND_ROTATE = """
import json, os, stat, sys
from pathlib import Path
from hermes_producer import logs
from hermes_producer.store import TaskStore

home = Path(sys.argv[1])
log = logs.configure(home / "log", max_bytes=2000, backup_count=2)
for n in range(40):
    logs.event(log, 20, "test.fill", "x" * 100)
with TaskStore(home / "hermes.db") as store:
    store.add("a private prompt", {"name": "prompt", "steps": []}, 1)
    modes = {str(p.relative_to(home)): stat.S_IMODE(os.lstat(p).st_mode) for p in [home, *home.rglob("*")]}
print(json.dumps(modes))
"""


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_hermes_home_is_private_whatever_the_umask(umask: int, env: dict[str, str], tmp_path: Path) -> None:
    """Given a umask of 022 or even 000, HERMES_HOME and its log directory are created 0700 and
    every file in them 0600: the task store and its -wal/-shm files (while open), the log and
    its rotated files; the same through the real CLI."""
    home = tmp_path / "deep" / "home"

    def under_umask() -> None:
        os.umask(umask)

    done = subprocess.run([PYTHON, "-c", OPEN_AND_ROTATE, str(home)], env=env, capture_output=True, text=True,
                          preexec_fn=under_umask, timeout=60)  # fmt: skip
    cli_home = tmp_path / "cli-home"
    cli = subprocess.run([PYTHON, "-m", "hermes_producer", "task", "--prompt", "private"],
                         env=env | {"HERMES_HOME": str(cli_home)}, capture_output=True, text=True,
                         preexec_fn=under_umask, timeout=60)  # fmt: skip

    assert done.returncode == 0, done.stderr
    modes = json.loads(done.stdout)
    assert {"hermes.db-wal", "hermes.db-shm", "log/hermes.log", "log/hermes.log.1", "log/hermes.log.2"} <= modes.keys()
    assert {name: mode for name, mode in modes.items() if mode != (0o700 if name in (".", "log") else 0o600)} == {}
    assert stat.S_IMODE((tmp_path / "deep").stat().st_mode) == 0o700  # a parent Hermes had to create
    assert cli.returncode == 0, cli.stderr
    for path in [cli_home, cli_home / "log", cli_home / "log" / "hermes.log", cli_home / "hermes.db"]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_loose_files_are_tightened_and_a_loose_home_is_reported(env: dict[str, str], tmp_path: Path) -> None:
    """Given a HERMES_HOME an older Hermes left open (directories 0755, files 0644) and a
    rotated log that is a symbolic link to someone else's file,
    `hermes history` tightens Hermes' own files and log directory, warns about HERMES_HOME
    (the operator's choice: left as it is) with the fix, and never chmods through the link."""
    home = Path(env["HERMES_HOME"])
    (home / "log").mkdir(parents=True)
    outside = tmp_path / "not-hermes.txt"
    outside.write_text("someone else's\n")
    for path in (home / "hermes.db", home / "log" / "hermes.log", home / "log" / "hermes.log.1"):
        path.write_bytes(b"")
        path.chmod(0o644)
    (home / "log" / "hermes.log.2").symlink_to(outside)
    for path in (home, home / "log", outside):
        path.chmod(0o755 if path.is_dir() else 0o644)

    done = hermes(env, "history")

    assert done.returncode == 0, done.stderr
    assert f"{home} is open to other users (mode 0755)" in done.stderr and f"chmod 700 {home}" in done.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    assert stat.S_IMODE((home / "log").stat().st_mode) == 0o700
    for name in ("hermes.db", "log/hermes.log", "log/hermes.log.1"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


# Metrics, Celery's view, Flower ----------------------------------------------------------------------------


@pytest.mark.cluster
def test_worker_metrics_listen_on_loopback_unless_told(
    redis_server: Any, env: dict[str, str], workers: Callable[..., WorkerProcess]
) -> None:
    """Given `hermes worker --metrics-port P`, the metrics listen on 127.0.0.1 only;
    `--metrics-address 0.0.0.0` (or HERMES_METRICS_ADDRESS) opens them to the network on
    purpose; an address that is not one is refused with exit 2 before anything starts."""
    redis_server.client().flushall()
    cluster = env | {"HERMES_BROKER_URL": redis_server.url()}
    quiet_port, open_port, env_port = free_port(), free_port(), free_port()
    quiet = workers(cluster, "m1", "--mode", "local", "--metrics-port", str(quiet_port))
    wide = workers(cluster, "m2", "--mode", "local", "--metrics-port", str(open_port), "--metrics-address", "0.0.0.0")
    by_env = workers(cluster | {"HERMES_METRICS_ADDRESS": "0.0.0.0"}, "m3", "--mode", "local",
                     "--metrics-port", str(env_port))  # fmt: skip
    bad = hermes(cluster, "worker", "--mode", "local", "--metrics-address", "every interface please")

    for worker, node in ((quiet, "local@m1"), (wide, "local@m2"), (by_env, "local@m3")):
        registered(redis_server.client(), worker, node)
    wait_until(lambda: listening(quiet_port) and listening(open_port) and listening(env_port), 30, 0.1,
               "metrics listening")
    assert listening(quiet_port) == {"127.0.0.1"}
    assert listening(open_port) == {"0.0.0.0"} and listening(env_port) == {"0.0.0.0"}
    with urllib.request.urlopen(f"http://127.0.0.1:{quiet_port}/metrics", timeout=10) as response:
        assert b"hermes_probe" in response.read()
    assert bad.returncode == 2 and "--metrics-address" in bad.stderr


@pytest.mark.cluster
@pytest.mark.slow
def test_celery_inspect_and_flower_show_no_password(
    redis_factory: RedisFactory, env: dict[str, str], workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Given a broker URL with the password as a query parameter (``?password=``, which kombu
    could not even parse), a worker starts on it, and neither its banner, `celery inspect conf`
    and `report`, nor Flower's /api/workers (which includes each worker's configuration) and
    Flower's own output show the password."""
    password = unique("query-pw")
    server = redis_factory(password=password)
    url = f"redis://127.0.0.1:{server.port}/0?password={password}"
    cluster = env | {"HERMES_BROKER_URL": url}
    worker = workers(cluster, "q1", "--mode", "local")
    registered(server.client(), worker, "local@q1")

    inspected = [
        subprocess.run([PYTHON, "-m", "celery", "-A", "hermes_worker.app", "inspect", what, "--timeout", "5"],
                       env=cluster, capture_output=True, text=True, timeout=60)
        for what in ("conf", "report", "stats")
    ]  # fmt: skip
    flower_user, flower_password = "ops", unique("flower-pw")
    port = free_port()
    flower_out = tmp_path / "flower.out"
    flower = start_flower_process(
        cluster | {"HERMES_FLOWER_USER": flower_user, "HERMES_FLOWER_PASSWORD": flower_password}, port, flower_out
    )
    try:
        token = base64.b64encode(f"{flower_user}:{flower_password}".encode()).decode()

        def api_workers() -> str | None:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers?refresh=1")
            request.add_header("Authorization", f"Basic {token}")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    body = response.read().decode()
            except (OSError, urllib.error.HTTPError):
                return None
            return body if '"conf"' in body and "broker_url" in body else None

        shown = wait_until(api_workers, 60, 0.1, "Flower's /api/workers with the worker's configuration")
    finally:
        flower.send_signal(signal.SIGTERM)
        flower.wait(timeout=20)

    assert inspected[0].returncode == 0 and "redis://:********@127.0.0.1" in inspected[0].stdout
    for done in inspected:
        assert password not in done.stdout + done.stderr
    assert password not in shown and "redis://:********@127.0.0.1" in shown
    assert "redis://:**@127.0.0.1" in worker.log  # Celery's banner
    assert password not in worker.log and password not in flower_out.read_text()
    assert flower_password not in worker.log + flower_out.read_text()


@pytest.mark.cluster
@pytest.mark.docker
@pytest.mark.slow
def test_a_container_worker_keeps_prompts_and_passwords_out_of_logs_and_sandboxes(
    redis_factory: RedisFactory,
    env: dict[str, str],
    workers: Callable[..., WorkerProcess],
    sandbox_image: Any,
    docker_client: Any,
    tmp_path: Path,
) -> None:
    """Given a container worker on a password-protected Redis and a batch whose prompts and
    ids carry a marker, the batch runs in sandbox sessions; neither the marker nor the password
    is in any log, the session containers' configuration (what `docker inspect` shows:
    environment, command, labels) holds neither, and the engine keeps no log of their output."""
    marker, password = unique("sk-LIVE-MARK"), unique("redis-pw")
    server = redis_factory(password=password)
    label = unique("secrets-test")
    cluster = env | {"HERMES_BROKER_URL": server.url(), "HERMES_SANDBOX_IMAGE": sandbox_image.tag,
                     "HERMES_CONTAINER_LABELS": f"hermes-test={label}", "HERMES_NO_FALLBACK": "1"}  # fmt: skip
    worker = workers(cluster, "c1", "--mode", "container", "-l", "debug")
    registered(server.client(), worker, "container@c1")
    src = tmp_path / "in.jsonl"
    write_marked_batch(src, marker)

    done = hermes(cluster, "batch", str(src), "-o", str(tmp_path / "out.jsonl"), "--isolation", "container")
    sessions = docker_client.containers.list(all=True, filters={"label": f"hermes-test={label}"})
    inspected = json.dumps([container.attrs for container in sessions])

    assert done.returncode == 1, done.stderr
    assert '"mode":"container"' in (tmp_path / "out.jsonl").read_text()
    assert sessions, "no session container found"
    assert marker not in inspected and password not in inspected
    assert {c.attrs["HostConfig"]["LogConfig"]["Type"] for c in sessions} == {"none"}  # frames carry prompts
    logged = everything_logged(cluster, server.client(), [worker.log_path])
    assert "chunk.started" in logged
    assert marker not in logged and password not in logged

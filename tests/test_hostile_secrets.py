"""Secrets (issue 11, class 5): what Hermes prints and shows (tests/test_hostile_secrets_logs.py:
what it logs, leaves on disk and listens on).

- One redaction (``hermes_worker.redact``) masks passwords in every URL shape, secret-named
  values, ``Authorization`` credentials and Hermes' own configured secrets, in linear time.
- ``hermes doctor``, ``status``, ``workers``, ``flower`` and every notice never print a password.
- A server that refuses our credentials (wrong password, no password, ACL denial, a certificate
  that does not verify) is a configuration error: exit 2 naming it, never a silent fallback;
  a worker stops at start-up saying so.
- Celery's ``inspect conf`` and Flower's API show no password, whichever form the URL has.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .support.environment import free_port
from .support.leaks import PYTHON, Workers, debug_env, everything_logged, hermes, registered, unique
from .support.processes import WorkerProcess, start_flower_process
from .support.redis_server import RedisServer, make_tls_files
from .support.timing import cpu_seconds
from .support.waiting import wait_until

RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with its own HERMES_HOME, no HERMES_* from the caller, DEBUG logging."""
    return debug_env(tmp_path)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Start `hermes worker` processes (output to a file); all stopped after the test."""
    with Workers(tmp_path) as start:
        yield start


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


# Celery's view, Flower ----------------------------------------------------------------------------


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

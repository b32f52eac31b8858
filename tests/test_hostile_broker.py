"""Crafted broker messages (issue 11, class 6): what anyone who can write to the broker can make a
worker do with a task message (tests/test_hostile_broker_forged.py: what they can forge elsewhere in
Redis, where producers and workers read).

Every field of a task message is checked against the contract before a worker acts on it; a refused
message is logged and counted, never run, never retried; a permanent Redis error is no outage;
remote-control commands and Celery's built-in tasks are off; signed deployments refuse every unsigned
or wrongly signed message.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hermes_worker.contract import PAYLOAD_VERSION
from hermes_worker.engine import ProfileError
from hermes_worker.metrics import field

from .support.environment import needs_module
from .support.fixture_types import HermesRunner, WorkerFactory
from .support.inputs import make_signing_files, read_records
from .support.processes import WorkerProcess
from .support.redis_server import RedisServer
from .support.waiting import wait_until

BATCH = "0123456789abcdef0123456789abcdef"


def request(chunk: int = 0, batch: str = BATCH, **changes: Any) -> dict[str, Any]:
    """A valid task-message payload whose lines wait in Redis under the batch's own key."""
    payload: dict[str, Any] = {
        "v": PAYLOAD_VERSION, "chunk": chunk, "profile": {"name": "nfc", "steps": ["nfc"]}, "max_validation": 0,
        "explain": False, "max_prompt_bytes": 1000, "format": "jsonl", "first": 1,
        "text_key": f"hermes:chunk:{batch}:{chunk}", "count": 1, "bad": [],
    }  # fmt: skip
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


def reply(batch: str = BATCH, ttl: Any = 60) -> dict[str, Any]:
    return {"stream": f"hermes:results:{batch}", "ttl": ttl}


# The contract, field by field ------------------------------------------------------------------------

REFUSED_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("text_key naming any key", {"text_key": "app:session:42"}, "'text_key' must be"),
    ("text_key of another batch", {"text_key": "hermes:chunk:ffffffffffffffffffffffffffffffff:0"}, "text_key"),
    ("text_key of another chunk", {"text_key": f"hermes:chunk:{BATCH}:1"}, "text_key"),
    ("chunk is a boolean", {"chunk": True}, "'chunk' must be an integer"),
    ("negative chunk", {"chunk": -1}, "'chunk'"),
    ("huge chunk", {"chunk": 1 << 62}, "'chunk'"),
    ("huge count", {"count": 10**12}, "'count'"),
    ("zero count", {"count": 0}, "'count'"),
    ("first line 0", {"first": 0}, "'first'"),
    ("first line past the end", {"first": (1 << 62) - 1, "count": 5}, "'first'"),
    ("max_validation huge", {"max_validation": 10**9}, "'max_validation'"),
    ("max_prompt_bytes 0", {"max_prompt_bytes": 0}, "'max_prompt_bytes'"),
    ("max_prompt_bytes huge", {"max_prompt_bytes": 10**15}, "'max_prompt_bytes'"),
    ("explain a string", {"explain": "yes"}, "'explain'"),
    ("isolation other than container", {"isolation": "local"}, "'isolation'"),
    ("version", {"v": 2}, "version 2 is not"),
    ("unknown step", {"profile": {"name": "p", "steps": ["rm_rf"]}}, "unknown step 'rm_rf'"),
    ("10,000 steps", {"profile": {"name": "p", "steps": ["nfc"] * 10_000}}, "1 to 64 steps"),
    ("profile name with a separator", {"profile": {"name": "a|b=c", "steps": ["nfc"]}}, "profile name"),
    ("profile name of a megabyte", {"profile": {"name": "p" * 2**20, "steps": ["nfc"]}}, "at most 64"),
    ("profile not an object", {"profile": "prompt"}, "'profile' must be an object"),
    ("bad index out of range", {"bad": [[5, "invalid_utf8", "x"]]}, "'bad' index 5"),
    ("bad code with a separator", {"bad": [[0, "x|y", "m"]]}, "unknown error code 'x|y'"),
    ("bad message of a megabyte", {"bad": [[0, "too_large", "m" * 2**20]]}, "at most 4096"),
    ("bad not a list", {"bad": "x"}, "'bad' must be a list"),
    ("format", {"format": "xml"}, "'format'"),
    ("no lines at all", {"text_key": ...}, "exactly one of"),
    ("two forms", {"items": [[1, 1, "x", None]]}, "exactly one of"),
]


@pytest.mark.parametrize(("what", "changes", "said"), REFUSED_REQUESTS, ids=[r[0] for r in REFUSED_REQUESTS])
def test_every_field_of_a_chunk_request_is_checked(what: str, changes: dict[str, Any], said: str) -> None:
    """Given a task message a broker writer made; when a worker validates it; then the field is named."""
    from hermes_worker.contract import ContractError
    from hermes_worker.wire import ChunkRequest, Reply

    with pytest.raises((ContractError, ProfileError)) as refused:
        ChunkRequest.from_payload(request(**changes), Reply.from_wire(reply()))
    assert said in str(refused.value)
    assert len(str(refused.value)) < 400  # a megabyte in a field never becomes a megabyte in the log


REFUSED_REPLIES: list[tuple[str, Any, str]] = [
    ("not an object", "hermes:results:x", "exactly 'stream' and 'ttl'"),
    ("a list", [BATCH, 60], "exactly 'stream' and 'ttl'"),
    ("extra field", {**reply(), "more": 1}, "exactly 'stream' and 'ttl'"),
    ("any key", {"stream": "app:session:42", "ttl": 60}, "not a Hermes results stream"),
    ("batch id not ours", {"stream": "hermes:results:pickle-test", "ttl": 60}, "batch id"),
    ("batch id with a colon", {"stream": f"hermes:results:{BATCH}:x", "ttl": 60}, "batch id"),
    ("ttl -1 (deletes the stream)", reply(ttl=-1), "'ttl' must be"),
    ("ttl 0", reply(ttl=0), "'ttl' must be"),
    ("ttl 10**20 (Redis refuses it)", reply(ttl=10**20), "'ttl' must be"),
    ("ttl over 30 days", reply(ttl=30 * 86_400 + 1), "'ttl' must be"),
    ("ttl a string", reply(ttl="60"), "'ttl' must be"),
    ("ttl a boolean", reply(ttl=True), "'ttl' must be"),
]


@pytest.mark.parametrize(("what", "value", "said"), REFUSED_REPLIES, ids=[r[0] for r in REFUSED_REPLIES])
def test_the_reply_names_only_a_results_stream_of_a_batch(what: str, value: Any, said: str) -> None:
    from hermes_worker.contract import ContractError
    from hermes_worker.wire import Reply

    with pytest.raises(ContractError) as refused:
        Reply.from_wire(value)
    assert said in str(refused.value)


def test_what_producers_send_passes_and_unknown_fields_are_dropped() -> None:
    """The checks refuse nothing a producer sends; extra fields never reach a runner."""
    from hermes_worker.wire import ChunkRequest, Reply

    answer = Reply.from_wire(reply())
    checked = ChunkRequest.from_payload(request(future_field={"x": 1}, isolation="container"), answer)
    assert checked.text_key == f"hermes:chunk:{BATCH}:0" and checked.isolation == "container"
    assert "future_field" not in checked.to_payload()
    resumed = Reply.from_wire(reply(batch="0123456789abcdef"))  # a batch begun in-process, resumed
    assert resumed.text_key(3) == "hermes:chunk:0123456789abcdef:3"
    parsed = [[1, "a", "x", None], [2, 2, None, ["bad_id", "m"]]]
    items = {**request(), "text_key": None, "count": None, "items": parsed}
    assert ChunkRequest.from_payload(items).to_payload()["items"] == items["items"]


# Refusals in the main process, before a pool process sees a message --------------------------------

GOOD_BODY = [[request(), reply()], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
LOCAL = {"routing_key": "hermes.local", "exchange": "hermes.local"}
MESSAGES: list[tuple[str, dict[str, Any], Any, dict[str, Any] | None, str]] = [
    ("protocol 1", {}, GOOD_BODY, LOCAL, "protocol 1"),
    ("eta", {"task": "t", "eta": "2999-01-01T00:00:00+00:00"}, GOOD_BODY, LOCAL, "ETA"),
    ("own time limits", {"task": "t", "timelimit": [10**9, 10**9]}, GOOD_BODY, LOCAL, "time limits"),
    ("args a string", {"task": "t"}, ["ab", {}, {}], LOCAL, "exactly two arguments"),
    ("three args", {"task": "t"}, [[1, 2, 3], {}, {}], LOCAL, "exactly two arguments"),
    ("keywords", {"task": "t"}, [[1, 2], {"x": 1}, {}], LOCAL, "exactly two arguments"),
    ("callbacks", {"task": "t"}, [[1, 2], {}, {"callbacks": [{"task": "x"}]}], LOCAL, "callbacks"),
    ("chain", {"task": "t"}, [[1, 2], {}, {"chain": [{"task": "x"}]}], LOCAL, "callbacks"),
    ("body not a list", {"task": "t"}, {"args": []}, LOCAL, "not [args"),
    ("no queue", {"task": "t"}, GOOD_BODY, None, "dropped"),
    ("the other queue", {"task": "t"}, GOOD_BODY, {"routing_key": "hermes.container"}, "put back"),
]


@pytest.mark.parametrize(("what", "headers", "body", "delivery", "said"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_a_worker_refuses_messages_no_producer_sends(
    what: str, headers: dict[str, Any], body: Any, delivery: dict[str, Any] | None, said: str
) -> None:
    from hermes_worker.guard import message_problem

    problem = message_problem(headers, body, delivery, "local")
    assert problem is not None and said in problem.reason
    assert problem.requeue == (what == "the other queue")
    assert message_problem({"task": "t", "timelimit": [None, None]}, GOOD_BODY, LOCAL, "local") is None


# Against a real worker -------------------------------------------------------------------------------


class Broker:
    """Sends hand-made task messages to the private cluster, as any broker writer could."""

    def __init__(self, env: dict[str, str], client: redis.Redis, worker: WorkerProcess) -> None:
        from hermes_worker.celeryconfig import make_celery
        from hermes_worker.settings import Settings

        self.app = make_celery(Settings.from_env(env), main="test_hostile")
        self.redis = client
        self.worker = worker
        self.home = Path(env["HERMES_HOME"])

    @property
    def log(self) -> str:
        """Hermes' own log of the worker (and of every `hermes` command of the test)."""
        path = self.home / "log" / "hermes.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def send(self, *args: Any, queue: str = "hermes.local", **options: Any) -> None:
        self.app.send_task("hermes.normalize_chunk", args=list(args), queue=queue, **options)

    def refused(self, kind: str = "invalid") -> int:
        node = f"local@{self.worker.name}"
        return int(self.redis.hget(f"hermes:metrics:{node}", field("messages_refused", kind=kind)) or 0)

    def wait(self, check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
        """Wait until ``check()`` is truthy while the worker lives; show its log if it never is."""

        def checked() -> Any:
            assert self.worker.process.poll() is None, f"the worker died:\n{self.worker.log[-3000:]}"
            return check()

        return wait_until(checked, timeout, 0.1, lambda: f"{what}:\n{self.worker.log[-3000:]}")

    def records_published(self) -> list[bytes]:
        """Every record any worker published on any result stream."""
        found = []
        for key in self.redis.scan_iter(match="hermes:results:*"):
            for _id, fields in self.redis.xrange(key):
                found += [fields[b"t"]] if b"t" in fields else []
        return found


@pytest.fixture
def broker(start_worker: WorkerFactory, cluster_env: dict[str, str], redis_server: RedisServer) -> Iterator[Broker]:
    worker = start_worker("w1")
    yield Broker(cluster_env, redis_server.client(), worker)


def batch_id() -> str:
    return uuid.uuid4().hex


@pytest.mark.cluster
def test_a_text_key_outside_the_batch_never_publishes_that_key(broker: Broker, chermes: HermesRunner) -> None:
    """Given a secret under any Redis key; when a message names it; then nobody sees it on a stream."""
    broker.redis.set("app:session:42", '{"prompt": "SECRET-SESSION-TOKEN"}')
    batch = batch_id()
    broker.send(request(batch=batch, text_key="app:session:42"), reply(batch))
    broker.wait(lambda: broker.worker.log.count("succeeded in"), "the message handled")
    everything = b"".join(v for k in broker.redis.scan_iter(match="hermes:*") if broker.redis.type(k) == b"stream"
                          for _id, f in broker.redis.xrange(k) for v in f.values())  # fmt: skip
    assert b"SECRET-SESSION-TOKEN" not in everything and "SECRET-SESSION-TOKEN" not in broker.log + broker.worker.log
    assert not broker.records_published() and broker.refused() == 1
    stream = broker.redis.xrange(f"hermes:results:{batch}")
    assert [list(fields) for _id, fields in stream] == [[b"x"]]  # one refusal notice for the producer
    assert "app:session:42" in json.loads(stream[0][1][b"x"])["reason"]
    assert "chunk message refused (invalid): chunk payload: 'text_key' must be" in broker.log
    # The worker goes on serving real work.
    assert chermes("run", "--prompt", "still fine", "--isolation", "local").returncode == 0


@pytest.mark.cluster
def test_a_reply_cannot_delete_or_expire_another_batchs_results(broker: Broker) -> None:
    victim = batch_id()
    broker.redis.xadd(f"hermes:results:{victim}", {"r": "{}"})
    for ttl in (-1, 0, 10**20):
        broker.send(request(batch=victim), reply(victim, ttl=ttl))
    broker.wait(lambda: broker.refused() == 3, "three refusals")
    assert broker.redis.xlen(f"hermes:results:{victim}") == 1 and broker.redis.ttl(f"hermes:results:{victim}") == -1


@pytest.mark.cluster
def test_a_permanent_redis_error_is_no_outage(broker: Broker) -> None:
    """Given a chunk key that holds a hash; then the worker says its lines are missing at once (no 86 s)."""
    batch = batch_id()
    broker.redis.hset(f"hermes:chunk:{batch}:0", "a", "b")
    started = time.monotonic()
    broker.send(request(batch=batch), reply(batch))
    notices = broker.wait(
        lambda: [f for _i, f in broker.redis.xrange(f"hermes:results:{batch}") if b"m" in f], "the lines-missing notice"
    )
    assert time.monotonic() - started < 10 and len(notices) == 1
    assert "Redis is not answering" not in broker.log and "could not be read from" in broker.log


@pytest.mark.cluster
def test_hand_made_messages_are_refused_counted_and_never_run(broker: Broker, chermes: HermesRunner) -> None:
    """Arguments of every wrong shape: each refused once, nothing published but refusal notices."""
    batch = batch_id()
    broker.redis.set(f"hermes:chunk:{batch}:0", b'{"prompt": "x"}')
    sends: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        (("not a payload", reply(batch)), {}),  # no chunk number: only counted
        ((request(batch=batch), "not a reply"), {}),
        ((request(batch=batch, bad=[[0, "x|y", "breaks hermes metrics"]]), reply(batch)), {}),
        ((request(batch=batch, count=10**12), reply(batch)), {}),
        ((request(batch=batch, chunk=1 << 62), reply(batch)), {}),
        ((request(batch=batch, profile={"name": "p", "steps": ["nfc"] * 10_000}), reply(batch)), {}),
    ]
    for args, options in sends:
        broker.send(*args, **options)
    broker.wait(lambda: broker.refused() == len(sends), "every refusal")
    assert not broker.records_published()
    notices = [json.loads(f[b"x"]) for _i, f in broker.redis.xrange(f"hermes:results:{batch}")]
    assert [n["chunk"] for n in notices] == [0, 0, 0]  # those that named a valid chunk of a valid stream
    metrics = chermes("metrics")
    assert metrics.returncode == 0
    assert 'hermes_messages_refused_total{kind="invalid",worker="local@w1"} 6.0' in metrics.stdout


@pytest.mark.cluster
def test_messages_with_an_eta_callbacks_or_their_own_time_limits_never_run(broker: Broker) -> None:
    batch = batch_id()
    broker.redis.set(f"hermes:chunk:{batch}:0", b'{"prompt": "x"}')
    good = (request(batch=batch), reply(batch))
    broker.send(*good, countdown=3600)
    broker.send(*good, time_limit=10**6, soft_time_limit=10**6)
    broker.send(*good, link=broker.app.signature("hermes.normalize_chunk", args=list(good)))
    broker.send(good, queue="hermes.local")  # args as one list: the task would get one argument
    broker.wait(lambda: broker.refused("message") == 4, "four refusals in the main process")
    assert not broker.records_published() and broker.redis.llen("hermes.local") == 0
    assert broker.log.count("refused: a message") == 3 and "exactly two arguments" in broker.log


@pytest.mark.cluster
def test_celerys_builtin_tasks_are_not_there_to_run(broker: Broker) -> None:
    """celery.starmap would run Hermes' task in the worker without the message checks; it is unknown."""
    batch = batch_id()
    broker.redis.set(f"hermes:chunk:{batch}:0", b'{"prompt": "x"}')
    signature = dict(broker.app.signature("hermes.normalize_chunk"))
    starmap = {"task": signature, "it": [[request(batch=batch), reply(batch)]]}
    broker.app.send_task("celery.starmap", kwargs=starmap, queue="hermes.local")
    broker.app.send_task("celery.accumulate", args=[1, 2], queue="hermes.local")
    broker.wait(lambda: broker.worker.log.count("Received unregistered task") >= 2, "two unknown tasks")
    assert not broker.records_published()
    assert broker.redis.llen("hermes.local") == 0


@pytest.mark.cluster
def test_a_chunk_sent_to_the_other_queue_goes_back_there(broker: Broker) -> None:
    """A message in hermes.local addressed to hermes.container: a local worker puts it back, unrun."""
    batch = batch_id()
    broker.redis.set(f"hermes:chunk:{batch}:0", b'{"prompt": "x"}')
    broker.send(request(batch=batch), reply(batch), queue="hermes.container")  # no container worker here
    broker.wait(lambda: broker.redis.llen("hermes.container") == 1, "the message in hermes.container")
    broker.redis.rpoplpush("hermes.container", "hermes.local")  # Redis lists are queues: a broker writer moves it
    broker.wait(lambda: broker.refused("wrong_queue") == 1, "the refusal")
    assert broker.wait(lambda: broker.redis.llen("hermes.container") == 1, "the message back in hermes.container")
    assert not broker.records_published()


@pytest.mark.cluster
def test_a_local_worker_refuses_a_chunk_that_must_run_in_a_container(broker: Broker) -> None:
    batch = batch_id()
    broker.redis.set(f"hermes:chunk:{batch}:0", b'{"prompt": "x"}')
    broker.send(request(batch=batch, isolation="container"), reply(batch))
    broker.wait(lambda: broker.refused("wrong_queue") == 1, "the refusal")
    [(_id, notice)] = broker.redis.xrange(f"hermes:results:{batch}")
    assert "must run in a container" in json.loads(notice[b"x"])["reason"] and not broker.records_published()


@pytest.mark.cluster
def test_remote_control_commands_that_would_change_a_worker_are_refused(broker: Broker) -> None:
    node = "local@w1"
    control = broker.app.control
    commands: list[tuple[str, dict[str, Any]]] = [
        ("shutdown", {}), ("pool_grow", {"n": 4}), ("pool_restart", {"reload": True}),
        ("add_consumer", {"queue": "hermes.container"}), ("cancel_consumer", {"queue": "hermes.local"}),
        ("rate_limit", {"task_name": "hermes.normalize_chunk", "rate_limit": "1/h"}),
        ("time_limit", {"task_name": "hermes.normalize_chunk", "hard": 0.001}),
        ("revoke", {"task_id": "x", "terminate": True}), ("disable_events", {}),
        ("autoscale", {"max": 9, "min": 1}), ("memdump", {}),
    ]  # fmt: skip
    # The worker's remote-control consumer starts a moment after its registry entry: wait for it.
    assert broker.wait(lambda: control.inspect(destination=[node], timeout=1).ping(), "the worker answers a ping")
    for command, arguments in commands:
        replies = control.broadcast(command, arguments=arguments, destination=[node], reply=True, timeout=3)
        assert replies and "refused by Hermes" in replies[0][node]["error"], (command, replies)
    inspect = control.inspect(destination=[node], timeout=3)
    assert sorted(q["name"] for q in inspect.active_queues()[node]) == ["celery", "hermes.local"]
    assert inspect.ping() == {node: {"ok": "pong"}} and inspect.stats()[node]["pool"]["max-concurrency"] == 1
    assert broker.worker.process.poll() is None
    assert broker.wait(lambda: broker.refused("control") == 11, "eleven refusals counted")


@pytest.mark.cluster
def test_a_consumer_added_by_remote_control_is_cancelled(
    start_worker: WorkerFactory, cluster_env: dict[str, str], redis_server: RedisServer, chermes: HermesRunner
) -> None:
    """With HERMES_WORKER_REMOTE_CONTROL=all add_consumer goes through; the queue watch undoes it."""
    worker = start_worker("w1", env={"HERMES_WORKER_REMOTE_CONTROL": "all"})
    broker = Broker(cluster_env, redis_server.client(), worker)
    control = broker.app.control
    replies = control.add_consumer("hermes.container", destination=["local@w1"], reply=True, timeout=3)
    assert "ok" in replies[0]["local@w1"]
    said = "consuming queue 'hermes.container', not its own: cancelled"
    broker.wait(lambda: said in chermes("log", "-n", "50").stdout, "the cancellation in the cluster log")
    queues = control.inspect(destination=["local@w1"], timeout=3).active_queues()["local@w1"]
    assert sorted(q["name"] for q in queues) == ["celery", "hermes.local"] and said in broker.log


# Signed messages --------------------------------------------------------------------------------------


@pytest.fixture
def signing(tmp_path: Path) -> dict[str, str]:
    needs_module("cryptography", reason="message signing needs hermes-prompts[signing]")
    key, cert = make_signing_files(tmp_path / "hermes", "hermes")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "hermes.pem").write_bytes(cert.read_bytes())
    return {"HERMES_SIGNING_KEY": str(key), "HERMES_SIGNING_CERT": str(cert), "HERMES_SIGNING_CERTS": str(trusted)}


@pytest.mark.cluster
def test_a_signed_batch_runs_through_a_real_worker(
    start_worker: WorkerFactory, chermes: HermesRunner, signing: dict[str, str], tmp_path: Path
) -> None:
    start_worker("w1", env=signing)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": n, "prompt": f"caf\u00e9 {n}"}) + "\n" for n in range(50)))
    done = chermes("batch", str(src), "-o", str(out), "--isolation", "local", "--chunk-size", "10", env=signing)
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    assert len(records) == 50 and {r["provenance"]["worker"] for r in records} == {"local@w1"}


@pytest.mark.cluster
def test_unsigned_or_wrongly_signed_messages_are_refused_and_never_run(
    start_worker: WorkerFactory, cluster_env: dict[str, str], redis_server: RedisServer, signing: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    from hermes_worker.celeryconfig import make_celery
    from hermes_worker.settings import Settings

    worker = start_worker("w1", env=signing)
    client = redis_server.client()
    batch = batch_id()
    client.set(f"hermes:chunk:{batch}:0", b'{"prompt": "x"}')
    good = [request(batch=batch), reply(batch)]
    # A producer without the key: plain JSON.
    make_celery(Settings.from_env(cluster_env), main="unsigned").send_task(
        "hermes.normalize_chunk", args=good, queue="hermes.local")
    # A producer with a key and certificate of its own, which the workers do not trust.
    other_key, other_cert = make_signing_files(tmp_path / "other", "intruder")
    intruder = dict(cluster_env, HERMES_SIGNING_KEY=str(other_key), HERMES_SIGNING_CERT=str(other_cert),
                    HERMES_SIGNING_CERTS=str(other_cert))  # fmt: skip
    make_celery(Settings.from_env(intruder), main="intruder").send_task(
        "hermes.normalize_chunk", args=good, queue="hermes.local")
    wait_until(lambda: "untrusted content of type json" in worker.log and "Unknown certificate" in worker.log, 20, 0.1,
               lambda: f"both refusals in the worker's log:\n{worker.log[-3000:]}")  # fmt: skip
    assert client.xlen(f"hermes:results:{batch}") == 0 and client.llen("hermes.local") == 0
    assert "BEGIN" not in worker.log  # no key material in the log


def test_signing_settings_are_checked_when_read(hermes: HermesRunner, signing: dict[str, str], tmp_path: Path) -> None:
    alone = hermes("workers", env={"HERMES_SIGNING_KEY": signing["HERMES_SIGNING_KEY"]})
    assert alone.returncode == 2 and "HERMES_SIGNING_CERT, HERMES_SIGNING_CERTS must be set too" in alone.stderr
    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ1dC1ub3QtYS1rZXk=\n-----END PRIVATE KEY-----\n")
    bad = hermes("workers", env=signing | {"HERMES_SIGNING_KEY": str(garbage)})
    assert bad.returncode == 2 and str(garbage) in bad.stderr and "c2VjcmV0" not in bad.stderr
    assert "Traceback" not in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none_trusted = hermes("workers", env=signing | {"HERMES_SIGNING_CERTS": str(empty)})
    assert none_trusted.returncode == 2 and "holds no certificate" in none_trusted.stderr


def test_a_signed_body_that_is_not_json_is_refused(signing: dict[str, str]) -> None:
    """Celery's auth serializer decodes whatever the signer named, pickle included; Hermes' takes JSON only."""
    import pickle

    from celery import Celery
    from celery.security.certificate import Certificate
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer
    from kombu.exceptions import DecodeError
    from kombu.serialization import loads

    from hermes_worker.signing import enable

    key, cert, certs = (Path(signing[f"HERMES_SIGNING_{n}"]) for n in ("KEY", "CERT", "CERTS"))
    app = Celery("signing-test", set_as_current=False)
    enable(app, key, cert, certs)
    assert app.conf.task_serializer == "auth" and app.conf.accept_content == ["auth"]
    signer = SecureSerializer(PrivateKey(key.read_text()), Certificate(cert.read_text()), None, "sha256",
                              serializer="pickle")  # fmt: skip
    signed_pickle = signer.serialize({"would": "unpickle"})
    assert pickle.dumps({"would": "unpickle"}) in base64.b64decode(signed_pickle)  # really a pickle inside
    with pytest.raises(DecodeError, match="only JSON is accepted"):
        loads(signed_pickle, "application/data", "utf-8", accept=["application/data"])
    json_signer = SecureSerializer(PrivateKey(key.read_text()), Certificate(cert.read_text()), None, "sha256")
    assert loads(json_signer.serialize([1, "a"]), "application/data", "utf-8", accept=["application/data"]) == [1, "a"]

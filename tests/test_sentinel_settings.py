"""Sentinel URLs (issue 15) without any service: what is accepted, what is refused and how, what
the clients are given, and that no password ever shows.

The failover itself, with real sentinels and workers: tests/test_chaos_sentinel.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.sentinel import MasterNotFoundError, SentinelConnectionPool

from hermes_worker.celeryconfig import broker_connection, celery_config, public_task_config
from hermes_worker.redact import redact, redact_url, url_secrets
from hermes_worker.redis_conn import brief, connect, primary, refusal, results_client
from hermes_worker.sandbox.docker_backend import deployment_id
from hermes_worker.sentinel_url import MAX_SENTINELS, SentinelUrl
from hermes_worker.settings import Settings, SettingsError

PASSWORD = "S3cret;pa@ss"  # both characters a sentinel list must have quoted
QUOTED = "S3cret%3Bpa%40ss"
GROUP = f"sentinel://:{QUOTED}@10.0.0.1:26379/2;sentinel://10.0.0.2:26379;sentinel://[fd00::3]:26380"


def settings(**env: str) -> Settings:
    return Settings.from_env({"HERMES_HOME": "/tmp/hermes-test-home", **env})


# Accepted: Celery's form, read as kombu and Celery read it.


def test_a_sentinel_list_is_read_as_celery_reads_it() -> None:
    url = SentinelUrl.parse(GROUP)
    assert url.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("fd00::3", 26380))
    assert (url.username, url.password, url.db) == (None, PASSWORD, 2)  # the first URL's: the primary's
    assert url.hosts() == "10.0.0.1:26379,10.0.0.2:26379,[fd00::3]:26380"
    same = f"sentinel://u:{QUOTED}@h1:1/3;sentinel://u:{QUOTED}@h2:2/3;"  # repeated alike, one trailing ';'
    assert SentinelUrl.parse(same) == SentinelUrl((("h1", 1), ("h2", 2)), "u", PASSWORD, 3)


def test_sentinel_settings_broker_and_results_alike() -> None:
    found = settings(HERMES_BROKER_URL=GROUP, HERMES_SENTINEL_MASTER="hermes-eu",
                     HERMES_SENTINEL_PASSWORD="sentinels-own-pw")  # fmt: skip
    assert found.result_backend == GROUP  # Redis: results follow the broker
    assert (found.sentinel_master, found.sentinel_password) == ("hermes-eu", "sentinels-own-pw")
    assert settings().sentinel_master == "mymaster"  # Celery's and Redis' usual name
    assert "sentinels-own-pw" not in repr(found) and PASSWORD not in repr(found)
    alone = settings(HERMES_BROKER_URL="redis://h:6379/0", HERMES_RESULT_BACKEND=GROUP)
    assert alone.result_backend == GROUP


# Refused, each with what is wrong, never quoting the URL (a piece of it may be a password).

HOSTILE_URLS = [
    ("sentinel://", "names no host"),
    ("sentinel://;sentinel://", "names no host"),
    (";".join(["sentinel://h:1"] * 40), f"names 40 sentinels; at most {MAX_SENTINELS}"),
    (";".join(["sentinel://h:26379"] * 10_000), "is 189,999 characters long; a sentinel list is at most 8,192"),
    (f"sentinel://:{PASSWORD}@h:26379;sentinel://g:26379", "';' in the password (write %2F, %3F, %23, %3B)"),
    ("sentinel://:S3cret@pa@ss@h:26379", "more than one '@': write an '@' in a password as %40"),
    ("sentinel://:S3cret@h", "has no port: write sentinel://HOST:PORT"),
    ("sentinel://:S3cret@h:26379x", "a port that is not a number from 1 to 65535"),
    ("sentinel://:S3cret@h:70000", "a port that is not a number from 1 to 65535"),
    ("sentinel://:S3cret@h:0", "has port 0"),
    ("sentinel://:S3cret@h:-1", "a port that is not a number"),
    ("sentinel://:S3cret@h:26379;redis://g:6379/0", "sentinel 2 of 2 is not a sentinel:// URL"),
    ("sentinel://:S3cret@h:26379/0?password=S3cret", "sentinel URLs take no parameters"),
    ("sentinel://:S3cret@h:26379/zero", "a database that is not a number"),
    ("sentinel://:S3cret@h:26379;sentinel://:Other1@g:26379", "sentinel 2 of 2 has a password other than"),
    ("sentinel://:S3cret@h:26379/1;sentinel://g:26379/2", "has a database other than the first one's"),
    ("sentinel://:S3cret@h\x1b[2J:26379", "contains spaces or control characters"),
    ("sentinel://:S3cret@h_:26379 ;sentinel://g:1", "contains spaces or control characters"),
    ("sentinel://:S3cret@-h-:26379", "neither an IP address nor a host name"),
]


@pytest.mark.parametrize(("value", "says"), HOSTILE_URLS, ids=[says for _v, says in HOSTILE_URLS])
@pytest.mark.parametrize("variable", ["HERMES_BROKER_URL", "HERMES_RESULT_BACKEND"])
def test_a_hostile_sentinel_url_is_refused_saying_why_and_never_quoting_it(variable: str, value: str,
                                                                           says: str) -> None:  # fmt: skip
    started = time.monotonic()
    with pytest.raises(SettingsError) as refused:
        settings(**{variable: value})
    message = str(refused.value)
    assert message.startswith(f"{variable} is invalid: ") and says in message, message
    assert "S3cret" not in message and "Other1" not in message and "pa@ss" not in message
    assert len(message) < 400 and time.monotonic() - started < 1.0


@pytest.mark.parametrize("name", ["", " ", "a b", "x" * 129, "$(reboot)", "m\x1b[2J", "-dash", "ünï"])
def test_a_hostile_master_name_is_refused(name: str) -> None:
    env = {"HERMES_SENTINEL_MASTER": name}
    if not name.strip():
        assert settings(**env).sentinel_master == "mymaster"  # blank: the default, like every setting
        return
    with pytest.raises(SettingsError, match=r"HERMES_SENTINEL_MASTER=.* is invalid: must be 1-128 letters"):
        settings(**env)


# What the clients are given: the primary's password in the URL, the sentinels' own apart.


def test_every_redis_client_and_celery_get_the_master_name_and_both_passwords() -> None:
    found = settings(HERMES_BROKER_URL=GROUP, HERMES_SENTINEL_MASTER="hermes-eu",
                     HERMES_SENTINEL_PASSWORD="sentinels-own-pw", HERMES_BROKER_TIMEOUT="2")  # fmt: skip
    client = results_client(found)  # results, registry, cluster log, metrics: nothing connects yet
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "hermes-eu"
    assert pool.connection_kwargs["password"] == PASSWORD and pool.connection_kwargs["db"] == 2
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26379, 26380]
    for sentinel in sentinels:
        kwargs = sentinel.connection_pool.connection_kwargs
        assert kwargs["password"] == "sentinels-own-pw" and kwargs["socket_connect_timeout"] == 2.0
    expected = {"master_name": "hermes-eu", "sentinel_kwargs": {"password": "sentinels-own-pw",
                "socket_connect_timeout": 2.0, "socket_timeout": 5.0, "socket_keepalive": True}}  # fmt: skip
    broker = celery_config(found)
    assert broker["broker_url"] == GROUP and broker["broker_use_ssl"] is None
    assert expected.items() <= broker["broker_transport_options"].items()
    assert public_task_config(found)["result_backend_transport_options"] == expected
    assert broker_connection(found).transport_options == expected
    plain = settings(HERMES_BROKER_URL="redis://h:6379/0")
    assert primary(connect(plain.result_backend, 1.0)) is None
    assert "master_name" not in celery_config(plain)["broker_transport_options"]
    assert public_task_config(plain)["result_backend_transport_options"] == {}


def test_a_sentinel_group_is_one_deployment_wherever_its_primary_and_whatever_the_password() -> None:
    home = Path("/tmp/hermes-test-home")
    one = Settings(home=home, result_backend=GROUP)
    other = Settings(home=home, result_backend="sentinel://:new-password@10.0.0.2:26379/2;"
                     "sentinel://[FD00::3]:26380;sentinel://10.0.0.1:26379")  # fmt: skip
    assert deployment_id(one) == deployment_id(other)
    assert deployment_id(one) != deployment_id(Settings(home=home, result_backend=GROUP, sentinel_master="b"))


# Secrets: masked wherever a sentinel URL is printed or logged.


def test_sentinel_passwords_never_show() -> None:
    assert redact_url(GROUP) == "sentinel://:***@10.0.0.1:26379/2;sentinel://10.0.0.2:26379;sentinel://[fd00::3]:26380"
    assert url_secrets(GROUP) == [PASSWORD]
    settings(HERMES_BROKER_URL=GROUP, HERMES_SENTINEL_PASSWORD="sentinels-own-pw")  # remembers both
    leaked = f"MasterNotFoundError: no master for 'x' (AUTH sentinels-own-pw failed; primary {PASSWORD}, {QUOTED})"
    shown = redact(leaked)
    assert "sentinels-own-pw" not in shown and PASSWORD not in shown and QUOTED not in shown


def test_sentinels_that_refuse_the_password_are_a_refusal_not_an_outage() -> None:
    # What redis-py raises when every sentinel refused HERMES_SENTINEL_PASSWORD: exit 2, no fallback.
    pool = ("<redis.client.Redis(<redis.connection.ConnectionPool(<redis.connection.Connection(db=0,host=s{n},"
            "port=26379)>)>)>")  # fmt: skip
    text = "No master found for 'm' : " + ", ".join(f"{pool.format(n=n)} - auth:AuthenticationError" for n in (1, 2))
    refused = MasterNotFoundError(text)
    assert refusal(refused) == "authentication failed"
    assert brief(refused) == ("No master found for 'm' (sentinel s1:26379: AuthenticationError; "
                              "sentinel s2:26379: AuthenticationError)")  # fmt: skip
    assert refusal(MasterNotFoundError("No master found for 'm'")) is None  # a failover under way: wait

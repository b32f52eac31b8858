"""Hermes from Python (issue 14, part 1): `normalize` for one prompt, `Client` for many.

In-process here (no broker: the embedded default); tests/test_cluster.py runs a Client on a
cluster with real workers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hermes_producer import Cleaned, Client, normalize
from hermes_worker.engine import ItemError, ProfileError
from hermes_worker.settings import Settings, SettingsError

NO_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _no_broker_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("HERMES_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HERMES_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HERMES_BROKER_URL", NO_BROKER)


def test_normalize_cleans_one_prompt_as_a_record_says() -> None:
    cleaned = normalize("cafÃ©  ", profile="prompt")
    assert cleaned == Cleaned(cleaned.text, True, {"rounds": 1, "converged": True}, cleaned.provenance)
    assert cleaned.text == "café" and cleaned.provenance["profile"] == "prompt"
    assert cleaned.provenance["mode"] == "local" and cleaned.explain is None


def test_normalize_takes_the_configured_profile_and_can_explain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERMES_PROFILE", "compact")
    cleaned = normalize("ﬁrst   line", explain=True)
    assert cleaned.text == "first line" and cleaned.provenance["profile"] == "compact"
    assert [step["step"] for step in cleaned.explain or []]


@pytest.mark.parametrize(
    ("prompt", "code"), [("", "empty_prompt"), ("a\x00b", "nul_byte"), ("\ud800", "lone_surrogate")]
)
def test_normalize_raises_the_item_error_a_record_would_hold(prompt: str, code: str) -> None:
    with pytest.raises(ItemError) as caught:
        normalize(prompt)
    assert caught.value.code == code


def test_normalize_refuses_an_unknown_profile_with_a_suggestion() -> None:
    with pytest.raises(ProfileError, match="did you mean 'prompt'"):
        normalize("x", profile="promt")


def test_a_client_maps_prompts_to_records_in_order(tmp_path: Path) -> None:
    with Client(processes=1, chunk_size=7) as client:
        records = list(client.map([f"caf\u00c3\u00a9 {n}" for n in range(50)] + [""], profile="prompt"))
    assert [r["line"] for r in records] == list(range(1, 52))
    assert records[0]["text"] == "café 0" and records[-1]["error"]["code"] == "empty_prompt"


def test_a_client_streams_without_reading_all_prompts_first() -> None:
    consumed = 0

    def prompts() -> Iterator[str]:
        nonlocal consumed
        for n in range(1_000_000):
            consumed += 1
            yield f"prompt {n}"

    with Client(processes=1, chunk_size=100) as client:
        first = next(client.map(prompts()))
    assert first["text"] == "prompt 0" and consumed < 10_000


def test_a_client_has_an_asyncio_flavour() -> None:
    async def collect() -> list[str]:
        with Client(processes=1) as client:
            return [record["text"] async for record in client.amap(["a\u00a0b", "c"], profile="nfkc")]

    assert asyncio.run(collect()) == ["a b", "c"]


def test_a_client_runs_a_file_batch_and_returns_its_summary(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "prompt": "caf\\u00c3\\u00a9"}\nnot json\n')
    with Client(processes=1) as client:
        summary = client.batch(source, tmp_path / "out.jsonl")
    assert (summary.total, summary.ok, summary.failed) == (2, 1, 1)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert records[0]["text"] == "café" and records[1]["error"]["code"] == "malformed_json"
    assert not (tmp_path / "out.jsonl.partial").exists() and not (tmp_path / "out.jsonl.lock").exists()


def test_a_client_batch_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "x"}\n')
    with Client(processes=1) as client, pytest.raises(Exception, match="is the input file"):
        client.batch(source, source)
    assert source.read_text() == '{"prompt": "x"}\n'


def test_a_client_without_a_broker_has_no_workers() -> None:
    with Client() as client:
        assert client.workers() == []


@pytest.mark.parametrize(
    ("settings", "named"),
    [({"chunk_size": 0}, "HERMES_CHUNK_SIZE"), ({"processes": "many"}, "HERMES_PROCESSES"),
     ({"isolation": "vm"}, "HERMES_ISOLATION"), ({"max_validation": float("nan")}, "HERMES_MAX_VALIDATION")],
)  # fmt: skip
def test_a_client_refuses_a_bad_setting_naming_it(settings: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Client(**settings)  # type: ignore[arg-type]


def test_a_client_refuses_an_unknown_setting_or_option() -> None:
    with pytest.raises(TypeError, match="unknown settings: chunksize"):
        Client(chunksize=3)
    with Client(processes=1) as client, pytest.raises(TypeError, match="unknown options: shout"):
        list(client.map(["x"], shout=True))


def test_the_settings_a_client_reads_are_the_environments_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERMES_CHUNK_SIZE", "17")
    assert Client().settings.chunk_size == 17
    assert Client(chunk_size=5).settings.chunk_size == 5
    assert Client("redis://10.9.9.9:6379/3").settings.broker_url == "redis://10.9.9.9:6379/3"
    assert isinstance(Client().settings, Settings)


@pytest.mark.parametrize(("option", "value"), [("max_validation", 10**9), ("item_time_budget", float("nan")),
                                               ("explain", "yes"), ("max_prompt_bytes", 0)])  # fmt: skip
def test_a_client_refuses_an_absurd_option_naming_it_before_any_work(option: str, value: object) -> None:
    from hermes_worker.contract import ContractError

    with Client(processes=1) as client, pytest.raises(ContractError, match=repr(option)):
        next(client.map(["x"], **{option: value}))

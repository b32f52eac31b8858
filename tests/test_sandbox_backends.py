"""Container backends are chosen by name in one registry; the probe and sessions ask it, never a string.

A fake backend (a :class:`SandboxSession` of our own, registered for one test) shows that what
the probe checks and what a session opens come from the registry entry alone. The real Docker
backend's checks run against the real engine in test_probe.py; the Dagger backend's failure
paths in test_sandbox_session.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hermes_worker.probe import probe
from hermes_worker.sandbox import BACKENDS, ImageMissing, SandboxSession, SessionFailed, backend, open_session
from hermes_worker.sandbox.session import timed
from hermes_worker.settings import Settings


class FakeSession(SandboxSession):
    """A backend whose engine is described by class attributes: no sandbox ever starts."""

    engine_name = "Fake"
    missing = ""  # what preflight reports missing, if anything
    started = 0

    @classmethod
    def preflight(cls, settings: Settings, details: dict[str, Any]) -> None:
        with timed(details, "fake_engine"):
            details["fake_version"] = "9.9"
        if cls.missing:
            raise ImageMissing(f"fake image {cls.missing} is gone", "build the fake image")

    @classmethod
    def health(cls, settings: Settings) -> str | None:
        return f"fake engine lost {cls.missing}" if cls.missing else None

    def _start(self) -> None:
        FakeSession.started += 1
        raise SessionFailed("the fake sandbox never starts", "")

    def close(self) -> None:
        pass

    def _attempt(self, payload: Mapping[str, Any], worker: str) -> dict[str, Any]:
        raise AssertionError("never started")

    def _replace(self) -> None:
        raise AssertionError("never started")


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings that choose the fake backend, registered under "fake" for this test only."""
    monkeypatch.setitem(BACKENDS, "fake", lambda: FakeSession)
    monkeypatch.setattr(FakeSession, "missing", "")
    monkeypatch.setattr(FakeSession, "started", 0)
    return Settings(home=tmp_path).with_overrides(container_backend="fake")


def test_every_registered_backend_can_be_chosen_and_opened(tmp_path: Path) -> None:
    assert {"docker", "dagger"} <= set(BACKENDS)
    for name in sorted(BACKENDS):
        chosen = Settings.from_env({"HERMES_HOME": str(tmp_path), "HERMES_CONTAINER_BACKEND": name})
        session_class = backend(chosen.container_backend)
        assert issubclass(session_class, SandboxSession)
        assert type(open_session(chosen, "w1")) is session_class  # opened, not started
    assert backend("docker").engine_name == "Docker" and backend("dagger").engine_name == "Dagger"


def test_the_setting_accepts_exactly_the_registered_backends(tmp_path: Path) -> None:
    from hermes_worker.settings import SETTINGS

    (spec,) = [spec for spec in SETTINGS if spec.variable == "HERMES_CONTAINER_BACKEND"]
    assert set(spec.parse.choices) == set(BACKENDS)  # type: ignore[attr-defined]


def test_an_unknown_backend_name_says_which_ones_exist(tmp_path: Path) -> None:
    with pytest.raises(SessionFailed) as caught:
        open_session(Settings(home=tmp_path).with_overrides(container_backend="podman"), "w1")
    assert caught.value.reason == "unknown container backend 'podman'"
    assert caught.value.fix == "set HERMES_CONTAINER_BACKEND to one of: " + ", ".join(sorted(BACKENDS))


def test_a_backend_without_a_cheap_check_is_taken_as_answering(tmp_path: Path) -> None:
    # Dagger reports its failures when a session starts: its engine watch never pauses the worker.
    settings = Settings(home=tmp_path).with_overrides(container_backend="dagger")
    details: dict[str, Any] = {}
    backend("dagger").preflight(settings, details)
    assert backend("dagger").health(settings) is None and details == {}


def test_the_probe_runs_the_chosen_backends_preflight(fake_backend: Settings) -> None:
    # Given the fake backend's image is gone
    FakeSession.missing = "fake:1"
    # When the probe runs / Then its preflight decides, with its own reason and fix, and no session starts
    result = probe(fake_backend, "w1")
    assert (result.tag, result.reason, result.fix) == ("local", "fake image fake:1 is gone", "build the fake image")
    assert result.details["backend"] == "fake" and result.details["fake_version"] == "9.9"
    assert set(result.details["timings_ms"]) == {"fake_engine"} and FakeSession.started == 0
    assert backend("fake").health(fake_backend) == "fake engine lost fake:1"


def test_a_passing_preflight_goes_on_to_a_session_of_the_chosen_backend(fake_backend: Settings) -> None:
    result = probe(fake_backend, "w1")
    assert result.tag == "local" and result.reason == "the fake sandbox never starts"
    assert FakeSession.started == 1 and set(result.details["timings_ms"]) == {"fake_engine", "session_start"}

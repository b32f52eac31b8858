"""Settings are declared once (issue 12, item 5): what a declaration promises.

A setting is one field of ``Settings`` declared with ``setting(...)``: its variable, parser,
default, help and secrecy. From that one declaration:

- ``Settings.from_env`` reads the variable, and only an unset or blank variable gives the default;
- a value the parser cannot use, however hostile, is refused naming the variable, never a crash;
- a secret never reaches a repr, and is masked wherever it turns up once read;
- the README's tables and the ``--help`` of the options that override it are generated;
- no command-line option reads a ``HERMES_*`` variable behind the settings' back.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from hermes_producer.cli import main
from hermes_worker import redact as redaction
from hermes_worker.redact import is_secret_name, redact
from hermes_worker.setting_parsers import DecimalRange, OneOf, WholeRange, flag, show_number
from hermes_worker.settings import LIMITS, SETTINGS, Secret, Setting, Settings, SettingsError, option_help
from hermes_worker.settings_docs import update_readme

from .support.environment import EXAMPLES, REPO
from .support.fixture_types import HermesRunner

# A value each non-numeric, non-choice setting accepts, and what it becomes: never its default.
SAMPLES: dict[str, tuple[str, Any]] = {
    "HERMES_HOME": ("~/elsewhere", Path("~/elsewhere").expanduser()),
    "HERMES_PROFILE": ("code", "code"),
    "HERMES_PROFILE_FILE": ("~/profiles.toml", Path("~/profiles.toml").expanduser()),
    "HERMES_SHARED_ROOT": ("/srv/prompts", Path("/srv/prompts")),
    "HERMES_LOG_LEVEL": ("warning", "WARNING"),
    "HERMES_BROKER_URL": ("amqp://hermes@mq:5672//", "amqp://hermes@mq:5672//"),
    "HERMES_RESULT_BACKEND": ("rediss://results:6380/2", "rediss://results:6380/2"),
    "HERMES_SENTINEL_MASTER": ("hermes-eu", "hermes-eu"),
    "HERMES_SENTINEL_PASSWORD": (" sentinel pw ", " sentinel pw "),  # taken exactly as written
    "HERMES_SANDBOX_IMAGE": ("registry.example/sandbox:1", "registry.example/sandbox:1"),
    "HERMES_CONTAINER_MEMORY": ("2G", "2g"),
    "HERMES_CONTAINER_LABELS": ("team=nlp, env=prod", (("team", "nlp"), ("env", "prod"))),
    "HERMES_FLOWER_USER": ("ops", "ops"),
    "HERMES_FLOWER_PASSWORD": (" pass word ", " pass word "),  # taken exactly as written
    "HERMES_FLOWER_ADDRESS": ("0.0.0.0", "0.0.0.0"),
    "HERMES_DEPLOYMENT": ("prod-eu.1", "prod-eu.1"),
    "HERMES_METRICS_ADDRESS": ("::1", "::1"),
    "HERMES_SIGNING_KEY": ("~/hermes.key", Path("~/hermes.key").expanduser()),
    "HERMES_SIGNING_CERT": ("~/hermes.pem", Path("~/hermes.pem").expanduser()),
    "HERMES_SIGNING_CERTS": ("~/trusted", Path("~/trusted").expanduser()),
}
SIGNING = ("HERMES_SIGNING_KEY", "HERMES_SIGNING_CERT", "HERMES_SIGNING_CERTS")  # all three or none
HOSTILE = ["nan", "inf", "-inf", "1e309", "-1", "9" * 5000, "1e999999", "١٢", "²", "0x10", "1 000", "\x00",
           "\U0010ffff"]  # fmt: skip


def sample(spec: Setting) -> tuple[str, Any]:
    """A value the setting accepts that is not its default: its upper bound, its last choice, or SAMPLES'."""
    if isinstance(spec.parse, WholeRange | DecimalRange):
        high = LIMITS[spec.variable][1]
        return show_number(high), high
    if isinstance(spec.parse, OneOf):
        return spec.parse.choices[-1], spec.parse.choices[-1]
    if spec.parse is flag:
        return ("no", False) if spec.default else ("yes", True)
    assert spec.variable in SAMPLES, f"{spec.variable}: add a sample value to SAMPLES"
    return SAMPLES[spec.variable]


def by_variable(*variables: str) -> list[Any]:
    return [pytest.param(spec, id=spec.variable) for spec in SETTINGS if not variables or spec.variable in variables]


DEFAULTS = dataclasses.asdict(Settings.from_env({}))


@pytest.fixture(autouse=True)
def forget_remembered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings.from_env remembers its secrets for the whole process: here they are values such as
    'redis://' in HERMES_FLOWER_PASSWORD, which later tests' redaction must not mask."""
    monkeypatch.setattr(redaction, "_known", set(redaction._known))


# -- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", by_variable())
def test_every_declared_variable_is_read_into_its_field(spec: Setting) -> None:
    """Given a value for one variable, its field holds the parsed value; unset, it holds the default."""
    text, expected = sample(spec)

    value = spec.read({spec.variable: text}, DEFAULTS)

    assert value == expected and type(value) is type(expected)
    assert value != spec.read({}, DEFAULTS), "the sample must differ from the default, or this proves nothing"


def test_from_env_reads_every_declared_variable_at_once() -> None:
    """Every declared variable reaches its field through Settings.from_env (signing: all three or none)."""
    env = {spec.variable: sample(spec)[0] for spec in SETTINGS if spec.variable not in SIGNING}

    settings = Settings.from_env(env)

    for spec in SETTINGS:
        expected = None if spec.variable in SIGNING else sample(spec)[1]
        assert getattr(settings, spec.name) == expected, spec.variable


def test_the_declarations_are_the_dataclass() -> None:
    """One declaration a field, one field a variable, and every variable a HERMES_* name."""
    names = [f.name for f in dataclasses.fields(Settings)]
    variables = [spec.variable for spec in SETTINGS]
    assert [spec.name for spec in SETTINGS] == names
    assert len(set(variables)) == len(variables) and all(v.startswith("HERMES_") for v in variables)
    assert set(LIMITS) == {s.variable for s in SETTINGS if isinstance(s.parse, WholeRange | DecimalRange)}


@pytest.mark.parametrize("spec", by_variable())
def test_blank_is_unset_except_for_values_taken_as_written(spec: Setting) -> None:
    """An empty variable gives the default; blanks too, unless the value is taken as written (paths, login)."""
    assert Settings.from_env({spec.variable: ""}) == Settings.from_env({})
    blank = {spec.variable: "  \t"}
    if spec.strip:
        assert Settings.from_env(blank) == Settings.from_env({})
    else:
        assert spec.read(blank, DEFAULTS) in ("  \t", Path("  \t"))


def test_computed_defaults_come_from_the_machine_or_another_setting() -> None:
    """HOME, the core count and the broker give the defaults that depend on them, unlike a hand-built Settings."""
    settings = Settings.from_env({"HERMES_BROKER_URL": "redis://broker:6379/3"})

    assert settings.home == Path.home() / ".hermes"
    assert settings.processes == settings.concurrency == min(os.cpu_count() or 1, 1024)
    assert settings.result_backend == "redis://broker:6379/3"
    assert Settings(home=Path("/h")).processes == 1
    with pytest.raises(SettingsError, match=r"^HERMES_RESULT_BACKEND is not set and .* need Redis"):
        Settings.from_env({"HERMES_BROKER_URL": "amqp://mq//"})  # and no Redis named for results


# -- refusing ----------------------------------------------------------------------------------


# The values of one setting are checked in one test, and every value that fails is named: a test
# id per setting and value (about 1,100) cost pytest ten times the parsing they check.


def shown(value: str) -> str:
    return repr(value) if len(value) <= 20 else f"{value[:12]!r}... ({len(value):,} characters)"


def refusal(variable: str, value: str) -> str:
    """What ``Settings.from_env`` says of ``variable=value``: '' when it reads it; a crash is named as one."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(redaction, "_known", set(redaction._known))  # each value on its own
    try:
        Settings.from_env({variable: value})
    except SettingsError as exc:
        return str(exc)
    except Exception as exc:  # the failure these tests exist for: a crash instead of a refusal
        return f"crashed: {exc!r}"[:300]
    finally:
        monkeypatch.undo()
    return ""


@pytest.mark.parametrize("spec", by_variable(*LIMITS))
def test_numbers_refuse_hostile_text_naming_the_variable_and_the_value(spec: Setting) -> None:
    """NaN, infinities, negatives, huge numbers, other scripts' digits: refused, quoting variable and value."""
    said = {value: refusal(spec.variable, value) for value in HOSTILE}

    wrong = {shown(v): m[:200] for v, m in said.items() if not m.startswith(f"{spec.variable}={v!r} is invalid: ")}
    assert not wrong, wrong


@pytest.mark.parametrize("spec", by_variable())
def test_no_value_crashes_the_parsing(spec: Setting) -> None:
    """Whatever the text, a setting is read or refused with a SettingsError naming it: never another exception."""
    # A broker URL that is not Redis leaves results without a Redis: that names the result backend.
    # A signing file alone is refused naming the two missing.
    names = {"HERMES_BROKER_URL": ("HERMES_BROKER_URL", "HERMES_RESULT_BACKEND is not set")}.get(spec.variable, ())
    names += ("HERMES_SIGNING_",) if spec.variable in SIGNING else (spec.variable,)
    values = [*HOSTILE, "x" * 100_000, "a=b" * 1000, "redis://", "://", ";;", "~", "\ud800"]

    said = {value: refusal(spec.variable, value) for value in values}

    wrong = {shown(v): m[:200] for v, m in said.items() if m and not m.startswith(names)}
    assert not wrong, wrong


def test_bounds_are_inclusive_and_the_message_names_them() -> None:
    for variable, (low, high) in LIMITS.items():
        assert Settings.from_env({variable: show_number(low)}) is not None
        assert Settings.from_env({variable: show_number(high)}) is not None
        below = show_number(low - 1)
        with pytest.raises(SettingsError, match=f"between {show_number(low)} and {show_number(high)}"):
            Settings.from_env({variable: below})


def test_a_url_the_clients_would_refuse_is_refused_without_quoting_it() -> None:
    """The check after reading names the variable and the problem, never the URL (it may hold a password)."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"HERMES_BROKER_URL": "redis://:pw-in-url@h/0?socket_timeout=x"})
    assert str(refused.value).startswith("HERMES_BROKER_URL is invalid: ") and "pw-in-url" not in str(refused.value)


def test_a_broker_typo_is_named_as_the_broker_not_as_the_result_backend_derived_from_it() -> None:
    with pytest.raises(SettingsError, match=r"^HERMES_BROKER_URL is invalid: must be a URL"):
        Settings.from_env({"HERMES_BROKER_URL": "abc"})


def test_a_broker_that_is_not_redis_needs_a_result_backend_and_the_message_says_so() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"HERMES_BROKER_URL": "amqp://guest:pw@localhost//"})
    message = str(refused.value)
    assert message.startswith("HERMES_RESULT_BACKEND is not set and the broker URL will not do: ")
    assert "''" not in message and "pw" not in message


def test_signing_needs_all_three_files() -> None:
    with pytest.raises(SettingsError, match=r"^HERMES_SIGNING_CERT, HERMES_SIGNING_CERTS must be set too"):
        Settings.from_env({"HERMES_SIGNING_KEY": "/k.pem"})


# -- secrets -----------------------------------------------------------------------------------


def test_the_secret_settings_are_declared_so() -> None:
    """What holds a password is declared secret, and so is every setting whose name says it is one."""
    secret = {spec.variable for spec in SETTINGS if not spec.loggable}
    assert secret == {"HERMES_BROKER_URL", "HERMES_RESULT_BACKEND", "HERMES_FLOWER_PASSWORD", "HERMES_SIGNING_KEY",
                      "HERMES_SENTINEL_PASSWORD"}
    assert {spec.variable for spec in SETTINGS if is_secret_name(spec.variable)} <= secret


@pytest.mark.parametrize("spec", by_variable(*(s.variable for s in SETTINGS if s.secret in (Secret.WHOLE, Secret.URL))))
def test_a_secret_is_never_in_a_repr_and_masked_once_read(spec: Setting) -> None:
    """Given a secret in a secret setting, the settings' repr holds no part of it, and redact masks it anywhere."""
    password = f"pw-{uuid.uuid4().hex[:12]}"
    value = f"redis://:{password}@redis.internal:6379/0" if spec.secret is Secret.URL else password

    settings = Settings.from_env({spec.variable: value})

    assert password not in repr(settings)
    assert redact(f"a library said <{password}>") == "a library said <***>"


# -- what is generated -------------------------------------------------------------------------


def test_the_readme_tables_are_generated_from_the_declarations() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme == update_readme(readme), "run: python -m hermes_worker.settings_docs --update README.md"
    for spec in SETTINGS:
        assert f"| `{spec.variable}` | {spec.shown_default} |" in readme, spec.variable


def _every_command(group: click.Group) -> Iterator[click.Command]:
    for command in group.commands.values():
        yield command
        if isinstance(command, click.Group):
            yield from _every_command(command)


def test_options_that_override_a_setting_take_its_help_and_read_no_variable() -> None:
    """Each option a declaration names exists, and its --help is the declaration's; no option has an envvar."""
    commands = dict(main.commands)
    for spec in SETTINGS:
        for option in spec.options:
            *where, flag_name = option.split()
            chosen = [commands[where[-1]]] if where else list(commands.values())
            found = [p for c in chosen for p in c.params if flag_name in p.opts]
            assert found, f"{spec.variable}: no command has {option}"
            for param in found:
                assert isinstance(param, click.Option) and param.help == option_help(spec.variable), option
    for command in _every_command(main):
        for param in command.params:
            assert param.envvar is None, f"{command.name} {param.opts}: the settings read the environment"


# -- through the command line ------------------------------------------------------------------


def test_the_profile_file_comes_from_the_settings_and_the_option_wins(hermes: HermesRunner, tmp_path: Path) -> None:
    """HERMES_PROFILE_FILE is read like every setting (its profiles can be named); --profile-file overrides it."""
    other = tmp_path / "other.toml"
    other.write_text('[profiles.only-in-other]\nsteps = ["nfc"]\n')
    missing = {"HERMES_PROFILE_FILE": str(tmp_path / "missing.toml")}

    from_env = hermes("run", "--prompt", "x", "--profile", "code", env={"HERMES_PROFILE_FILE": str(EXAMPLES /
                      "profiles.toml")})  # fmt: skip
    without = hermes("run", "--prompt", "x", "--profile", "code")
    from_option = hermes("run", "--prompt", "x", "--profile", "only-in-other", "--profile-file", str(other),
                         env=missing)  # fmt: skip
    unreadable = hermes("run", "--prompt", "x", env=missing)

    assert from_env.returncode == 0 and from_env.stdout == "x\n", from_env.stderr
    assert without.returncode == 2 and "unknown profile 'code'" in without.stderr
    assert from_option.returncode == 0 and from_option.stdout == "x\n", from_option.stderr
    assert unreadable.returncode == 2 and "missing.toml" in unreadable.stderr and "Traceback" not in unreadable.stderr

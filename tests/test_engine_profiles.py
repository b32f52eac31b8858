"""Profiles: custom TOML files, resolution by name, specs that travel, digests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hermes_worker.engine import (
    BUILTIN_PROFILES,
    DEFAULT_PROFILE,
    STEPS,
    Profile,
    ProfileError,
    apply_profile,
    load_profile_file,
    normalize,
    resolve_profile,
)

VALID = """\
[profiles.code]
description = "fix encodings, keep every space"
steps = ["ftfy", "strip_controls"]

[profiles.search-key]
steps = ["nfkc", "collapse_whitespace", "strip"]
"""


def _write(tmp_path: Path, text: str | bytes, name: str = "profiles.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- a valid file -----------------------------------------------------------------------------


def test_valid_file_loads_every_profile_in_order(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)

    profiles = load_profile_file(path)

    assert list(profiles) == ["code", "search-key"]
    assert profiles["code"] == Profile("code", ("ftfy", "strip_controls"), "fix encodings, keep every space")
    assert profiles["search-key"].steps == ("nfkc", "collapse_whitespace", "strip")
    assert profiles["search-key"].description == ""


def test_loading_accepts_a_str_path(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    assert load_profile_file(str(path)) == load_profile_file(path)


def test_custom_profiles_resolve_and_run(tmp_path: Path) -> None:
    custom = load_profile_file(_write(tmp_path, VALID))

    code = resolve_profile("code", custom)
    result = normalize("caf\u00c3\u00a9\x07  \r\n\tx  ", code)

    # ftfy repairs and turns CRLF into LF; strip_controls drops BEL; spaces stay as they are.
    assert result.text == "café  \n\tx  "
    assert result.converged is True
    assert apply_profile("  Ａ\u3000b \n c ", resolve_profile("search-key", custom)) == "A b c"
    # Built-in profiles stay reachable next to the custom ones.
    assert resolve_profile("prompt", custom) is BUILTIN_PROFILES["prompt"]


def test_example_from_the_docstring_loads(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[profiles.code]\ndescription = "keep everything but fix encodings"\nsteps = ["ftfy", "strip_controls"]\n',
    )
    assert load_profile_file(path)["code"].steps == ("ftfy", "strip_controls")


# --- every kind of invalid file -----------------------------------------------------------------

# (file content, what the message must also mention besides the file name)
INVALID_FILES = {
    "not TOML": ("[profiles.code\nsteps = [", ["not valid TOML"]),
    "not UTF-8": (b'[profiles.code]\ndescription = "caf\xe9"\nsteps = ["nfc"]\n', ["not valid TOML"]),
    "unknown top-level key": (
        'title = "mine"\n[profiles.code]\nsteps = ["nfc"]\n',
        ["unknown top-level keys", "title"],
    ),
    "a top-level step list": ('steps = ["nfc"]\n', ["unknown top-level keys", "steps"]),
    "empty file": ("", ["no profiles defined"]),
    "empty profiles table": ("[profiles]\n", ["no profiles defined"]),
    "profiles is not a table": ('profiles = ["nfc"]\n', ["no profiles defined"]),
    "profile is not a table": ('[profiles]\ncode = ["nfc"]\n', ["'code'", "must be a table"]),
    "redefines a built-in": ('[profiles.prompt]\nsteps = ["nfc"]\n', ["'prompt'", "built-in"]),
    "unknown key in a profile": (
        '[profiles.code]\nsteps = ["nfc"]\nstep = ["nfkc"]\n',
        ["'code'", "unknown keys", "step"],
    ),
    "steps missing": ('[profiles.code]\ndescription = "no steps"\n', ["'code'", "'steps' must be a list"]),
    "steps is a string": ('[profiles.code]\nsteps = "nfc"\n', ["'code'", "'steps' must be a list"]),
    "a step is not a string": ('[profiles.code]\nsteps = ["nfc", 3]\n', ["'code'", "'steps' must be a list"]),
    "description is not a string": ('[profiles.code]\nsteps = ["nfc"]\ndescription = 1\n', ["'code'", "'description'"]),
    "empty step list": ("[profiles.code]\nsteps = []\n", ["'code'", "no steps"]),
    "unknown step, with a suggestion": (
        '[profiles.code]\nsteps = ["ftfy", "strip_control"]\n',
        ["'code'", "unknown step 'strip_control'", "did you mean 'strip_controls'?", "known steps"],
    ),
    "unknown step, nothing close": (
        '[profiles.code]\nsteps = ["zzzz"]\n',
        ["'code'", "unknown step 'zzzz'", "known steps"],
    ),
    "upper-case profile name": ('[profiles.Code]\nsteps = ["nfc"]\n', ["'Code'", "invalid"]),
    "profile name starting with a digit": ('[profiles.2fast]\nsteps = ["nfc"]\n', ["'2fast'", "invalid"]),
    "profile name with a trailing newline": ('[profiles."code\\n"]\nsteps = ["nfc"]\n', ["'code\\n'", "invalid"]),
    "profile name too long": (f'[profiles.{"a" * 65}]\nsteps = ["nfc"]\n', ["a" * 65, "invalid"]),
    "second profile bad, first fine": (
        '[profiles.good]\nsteps = ["nfc"]\n[profiles.bad]\nsteps = ["nope"]\n',
        ["'bad'", "unknown step 'nope'"],
    ),
}


@pytest.mark.parametrize(("content", "mentions"), list(INVALID_FILES.values()), ids=list(INVALID_FILES))
def test_invalid_file_raises_profile_error_naming_the_file(
    tmp_path: Path, content: str | bytes, mentions: list[str]
) -> None:
    path = _write(tmp_path, content)

    with pytest.raises(ProfileError) as info:
        load_profile_file(path)

    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in mentions:
        assert fragment in message, message


def test_missing_file_raises_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ProfileError, match=rf"^{re.escape(str(path))}: cannot read profile file"):
        load_profile_file(path)


def test_directory_instead_of_file_raises_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=rf"^{re.escape(str(tmp_path))}: cannot read profile file"):
        load_profile_file(tmp_path)


def test_profile_errors_are_engine_errors_and_chain_the_cause(tmp_path: Path) -> None:
    from hermes_worker.engine import EngineError

    with pytest.raises(EngineError) as info:
        load_profile_file(_write(tmp_path, "[profiles.code\n"))
    assert isinstance(info.value, ProfileError)
    assert info.value.__cause__ is not None


# --- resolve_profile --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_PROFILES))
def test_resolve_builtin(name: str) -> None:
    assert resolve_profile(name) is BUILTIN_PROFILES[name]


def test_default_profile_is_prompt() -> None:
    assert DEFAULT_PROFILE == "prompt"
    assert resolve_profile(DEFAULT_PROFILE).steps == (
        "strip_terminal_escapes",
        "ftfy",
        "unify_newlines",
        "strip_controls",
        "strip_invisible",
        "nfc",
        "rstrip_lines",
        "collapse_blank_lines",
        "trim_blank_edges",
    )


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    custom = load_profile_file(_write(tmp_path, VALID))

    with pytest.raises(ProfileError) as info:
        resolve_profile("promt", custom)

    message = str(info.value)
    assert "unknown profile 'promt' (did you mean 'prompt'?)" in message
    for name in [*BUILTIN_PROFILES, *custom]:
        assert name in message


@pytest.mark.parametrize("name", ["zzz", "", "\x1b[2J", 7])
def test_an_unknown_profile_far_from_any_gets_no_guess(name: object) -> None:
    with pytest.raises(ProfileError) as info:
        resolve_profile(name)  # type: ignore[arg-type]
    assert "did you mean" not in str(info.value)


def test_custom_profiles_are_not_global(tmp_path: Path) -> None:
    load_profile_file(_write(tmp_path, VALID))
    with pytest.raises(ProfileError, match="unknown profile 'code'"):
        resolve_profile("code")


# --- specs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_PROFILES))
def test_spec_round_trips_through_json(name: str) -> None:
    profile = BUILTIN_PROFILES[name]

    spec = json.loads(json.dumps(profile.spec()))
    again = Profile.from_spec(spec)

    assert spec == {"name": name, "steps": list(profile.steps)}
    assert (again.name, again.steps, again.digest) == (profile.name, profile.steps, profile.digest)
    sample = " caf\u00c3\u00a9 \n\n\n x\u200b "
    assert apply_profile(sample, again) == apply_profile(sample, profile)


def test_custom_spec_round_trip_drops_only_the_description(tmp_path: Path) -> None:
    code = load_profile_file(_write(tmp_path, VALID))["code"]
    again = Profile.from_spec(code.spec())
    assert again == Profile("code", code.steps)
    assert again.digest == code.digest


BAD_SPECS = {
    "not a mapping": (["nfc"], "must be an object"),
    "no name": ({"steps": ["nfc"]}, "string 'name'"),
    "name not a string": ({"name": 3, "steps": ["nfc"]}, "string 'name'"),
    "no steps": ({"name": "x"}, "list of step names"),
    "steps a tuple, not JSON": ({"name": "x", "steps": ("nfc",)}, "list of step names"),
    "steps a string": ({"name": "x", "steps": "nfc"}, "list of step names"),
    "a step not a string": ({"name": "x", "steps": ["nfc", None]}, "list of step names"),
    "unknown step": ({"name": "x", "steps": ["nfc", "nfq"]}, "unknown step 'nfq'"),
    "empty steps": ({"name": "x", "steps": []}, "has no steps"),
    "bad name": ({"name": "Bad Name", "steps": ["nfc"]}, "is invalid"),
}


@pytest.mark.parametrize(("spec", "message"), list(BAD_SPECS.values()), ids=list(BAD_SPECS))
def test_from_spec_rejects_malformed_specs(spec: object, message: str) -> None:
    with pytest.raises(ProfileError, match=re.escape(message)):
        Profile.from_spec(spec)  # type: ignore[arg-type]


# --- digests ----------------------------------------------------------------------------------


def test_digest_depends_on_steps_not_on_name_or_description() -> None:
    steps = ("ftfy", "nfc")
    first = Profile("first", steps, "one description")
    second = Profile("second", steps, "another description")

    assert first.digest == second.digest
    assert re.fullmatch(r"[0-9a-f]{16}", first.digest)


def test_digest_changes_with_steps_and_their_order() -> None:
    digests = {
        Profile("p", ("ftfy", "nfc")).digest,
        Profile("p", ("nfc", "ftfy")).digest,
        Profile("p", ("ftfy",)).digest,
        Profile("p", ("ftfy", "nfc", "nfc")).digest,
    }
    assert len(digests) == 4


def test_builtin_digests_are_distinct_and_match_a_copy() -> None:
    assert len({profile.digest for profile in BUILTIN_PROFILES.values()}) == len(BUILTIN_PROFILES)
    for profile in BUILTIN_PROFILES.values():
        assert Profile("copy", profile.steps).digest == profile.digest


def test_profiles_are_frozen() -> None:
    profile = BUILTIN_PROFILES["prompt"]
    with pytest.raises(AttributeError):
        profile.steps = ("nfc",)  # type: ignore[misc]


def test_every_step_is_registered_under_its_own_name() -> None:
    for name, step in STEPS.items():
        assert step.name == name
        assert step.summary

"""The Hermes normalization engine: profiles of pure steps, validation, provenance.

Imports only the standard library and ftfy, so it runs unchanged inside the sandbox image.

>>> from hermes_worker.engine import normalize, resolve_profile
>>> normalize("Ã©tÃ©", resolve_profile("prompt")).text
'été'
"""

from .errors import EngineError, ItemError, ProfileError
from .normalize import Normalized, apply_profile, normalize
from .profiles import BUILTIN_PROFILES, DEFAULT_PROFILE, Profile, load_profile_file, resolve_profile
from .provenance import engine_versions, provenance
from .steps import STEPS, Step
from .validate import DEFAULT_MAX_PROMPT_BYTES, check_prompt, find_violations

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_MAX_PROMPT_BYTES",
    "DEFAULT_PROFILE",
    "STEPS",
    "EngineError",
    "ItemError",
    "Normalized",
    "Profile",
    "ProfileError",
    "Step",
    "apply_profile",
    "check_prompt",
    "engine_versions",
    "find_violations",
    "load_profile_file",
    "normalize",
    "provenance",
    "resolve_profile",
]

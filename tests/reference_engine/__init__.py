"""The engine as it was before issue 13's speed work, frozen: what the differential test compares with.

See README.md here: which commit it comes from and the one line changed.
"""

from .normalize import Normalized, normalize
from .profiles import BUILTIN_PROFILES, Profile

__all__ = ["BUILTIN_PROFILES", "Normalized", "Profile", "normalize"]

"""ftfy's repairs of one segment, with a bound on their work: linear time on any text.

ftfy (6.3.1) repeats its fixes until the text stops changing, and a text built for it can make
that take as many rounds as it has characters, each round going over the whole text:

- every round of ``fix_and_explain`` unescapes one level of nested HTML entities:
  ``"&" + "amp;" * k`` takes k rounds (0.9 s at 16 KB, hours at 1 MiB);
- every step of ``fix_encoding`` peels one character off ``"Â" * k + "©"`` (11 s at 4 KB), also
  when ``decode_inconsistent_utf8`` hands an embedded run of mojibake back to ``fix_encoding``;
- its "utf-8-variants" decoder copies the rest of its input for every Java NUL or CESU-8
  sequence it decodes (``"À\\x80" * k``: quadratic, 0.9 s at 640 KB);
- the NFC at the end of every round sorts combining marks by insertion (see :mod:`.normal_forms`).

This module runs ftfy's own control flow (``fix_and_explain``, ``fix_encoding_and_explain``,
``_fix_encoding_one_step_and_explain``, ``decode_inconsistent_utf8``), calling ftfy's own fixers,
tables, codecs and mojibake test at every leaf, with three changes: the loops draw on one budget
of work per segment; the utf-8-variants decoder walks offsets instead of slicing; NFC comes from
:mod:`.normal_forms`. While the budget lasts, the result is byte-identical to
``ftfy.fix_and_explain`` (differential tests compare the two on every golden case and on
generated text). The budget of a segment is ``WORK_FACTOR × (its length + 64)``; a round, or an
encoding step, costs the length of the text it goes over plus 64 (1 for the steps
``decode_inconsistent_utf8`` takes on the small pieces it repairs). Real text needs a few rounds
(ftfy's fix, then its check that nothing is left): the 114,254 prompts of the bench corpus use
30 % of their budget at most. When the budget runs out the loops stop and the segment comes back
as the last completed fix left it: valid text, partly repaired, and the profile's validation
round reports that it did not converge.

The mirror follows ftfy 6.3.1 line by line; ``tests/test_hostile_time_identity.py`` fails if a
newer ftfy gives different results.
"""

from __future__ import annotations

import codecs
import functools
import re
from typing import cast

import ftfy
from ftfy import chardata, fixes
from ftfy.bad_codecs import utf8_variants
from ftfy.badness import is_bad

from .normal_forms import normalize as _normalize

__all__ = ["WORK_FACTOR", "fix_and_explain", "fix_segment", "fix_within_budget"]

# A segment may go over itself about this many times. Real text needs 2 to 6 (a round that
# fixes, a round that finds nothing left, each with a step or two of encoding repair, and two
# steps for every embedded piece of mojibake that decode_inconsistent_utf8 repairs on its own);
# an entity escaped 13 times, or 20 "Â" before a "©", still fit.
WORK_FACTOR = 20
# A round or step also costs this much beyond its length (a dozen passes and calls have a fixed
# price), and a segment's budget counts this much on top of its length: a short line gets a few
# dozen rounds, not thousands.
_STEP_OVERHEAD = 64
_SEGMENT_FLOOR = 64
_EMBEDDED_OVERHEAD = 1
# Segments up to this long have their results remembered (see fix_segment).
_MEMO_MAX_LEN = 256

_PLAIN_CONFIG = ftfy.TextFixerConfig(explain=False)

_OUTER_FIXERS = (
    "fix_c1_controls",
    "fix_latin_ligatures",
    "fix_character_width",
    "uncurl_quotes",
    "fix_line_breaks",
    "fix_surrogates",
    "remove_terminal_escapes",
    "remove_control_chars",
)

Steps = list[ftfy.ExplanationStep]


class _Budget:
    """The work a segment may still do, in characters gone over."""

    __slots__ = ("left", "ran_out")

    def __init__(self, segment: str) -> None:
        self.left = WORK_FACTOR * (len(segment) + _SEGMENT_FLOOR)
        self.ran_out = False

    def take(self, text: str, overhead: int = _STEP_OVERHEAD) -> bool:
        """Pay for one pass over ``text``; False (and nothing paid) if the budget cannot."""
        cost = len(text) + overhead
        if cost > self.left:
            self.left = 0  # once out, out: a shorter text later must not resume the work
            self.ran_out = True
            return False
        self.left -= cost
        return True


def _try_fix(name: str, text: str, config: ftfy.TextFixerConfig, steps: Steps | None) -> str:
    # ftfy._try_fix
    if getattr(config, name):
        fixed = cast(str, ftfy.FIXERS[name](text))
        if steps is not None and fixed != text:
            steps.append(ftfy.ExplanationStep("apply", name))
        return fixed
    return text


def fix_and_explain(text: str, config: ftfy.TextFixerConfig) -> ftfy.ExplainedText:
    """``ftfy.fix_and_explain(text, config)`` for one segment, within the segment's budget.

    >>> fix_and_explain("&amp;amp; sÃ³", _PLAIN_CONFIG).text
    '& só'
    """
    return fix_within_budget(text, config)[0]


def fix_within_budget(text: str, config: ftfy.TextFixerConfig) -> tuple[ftfy.ExplainedText, bool]:
    """:func:`fix_and_explain`, and whether it finished (False: the budget ran out first).

    >>> fix_within_budget("&" + "amp;" * 10, _PLAIN_CONFIG)[1], fix_within_budget("&" + "amp;" * 99, _PLAIN_CONFIG)[1]
    (True, False)
    """
    budget = _Budget(text)
    if config.unescape_html == "auto" and "<" in text:
        config = config._replace(unescape_html=False)
    steps: Steps | None = [] if config.explain else None
    while budget.take(text):
        origtext = text
        text = _try_fix("unescape_html", text, config, steps)
        if config.fix_encoding:
            if steps is None:
                text = _fix_encoding(text, _PLAIN_CONFIG, budget, None)
            else:
                text = _fix_encoding(text, config, budget, steps)
        for fixer in _OUTER_FIXERS:
            text = _try_fix(fixer, text, config, steps)
        if config.normalization is not None:
            fixed = _normalize(config.normalization, text)
            if steps is not None and fixed != text:
                steps.append(ftfy.ExplanationStep("normalize", config.normalization))
            text = fixed
        if text == origtext:
            break
    return ftfy.ExplainedText(text, steps), not budget.ran_out


def fix_segment(segment: str, config: ftfy.TextFixerConfig) -> str:
    """``fix_and_explain(segment, config).text``, remembered for short segments.

    ftfy's work on a short line is mostly fixed costs (a dozen fixes, ten codecs tried): about
    40 µs for ``"\\x9d\\n"``, 20 s for a MiB of that line. Text made of a few lines repeated,
    hostile or not, pays for each distinct line once.
    """
    if len(segment) <= _MEMO_MAX_LEN:
        return _fixed_short_segment(segment, config)
    return fix_and_explain(segment, config).text


@functools.lru_cache(maxsize=1024)
def _fixed_short_segment(segment: str, config: ftfy.TextFixerConfig) -> str:
    return fix_and_explain(segment, config).text


def _fix_encoding(
    text: str, config: ftfy.TextFixerConfig, budget: _Budget, steps: Steps | None, overhead: int = _STEP_OVERHEAD
) -> str:
    # ftfy.fix_encoding_and_explain; its plan goes straight into ``steps``.
    if not config.fix_encoding:
        return text
    while budget.take(text, overhead):
        prevtext = text
        text, plan = _fix_encoding_one_step(text, config, budget)
        if steps is not None:
            steps.extend(plan)
        if text == prevtext:
            break
    return text


def _fix_encoding_one_step(text: str, config: ftfy.TextFixerConfig, budget: _Budget) -> tuple[str, Steps]:
    # ftfy._fix_encoding_one_step_and_explain, with its comments shortened.
    if len(text) == 0:
        return text, []
    # ASCII text, and text that does not look like mojibake, is left alone.
    if chardata.possible_encoding(text, "ascii") or not is_bad(text):
        return text, []

    possible_1byte_encodings = []
    # UTF-8 decoded as a single-byte encoding: the most common mojibake.
    for encoding in chardata.CHARMAP_ENCODINGS:
        if chardata.possible_encoding(text, encoding):
            possible_1byte_encodings.append(encoding)
            encoded_bytes = text.encode(encoding)
            encode_step = ftfy.ExplanationStep("encode", encoding)
            transcode_steps = []
            try:
                decoding = "utf-8"
                # UTF-8 with b' ' where b'\xa0' belongs (not in macroman: en dash + space).
                if config.restore_byte_a0 and encoding != "macroman" and chardata.ALTERED_UTF8_RE.search(encoded_bytes):
                    replaced_bytes = fixes.restore_byte_a0(encoded_bytes)
                    if replaced_bytes != encoded_bytes:
                        transcode_steps.append(ftfy.ExplanationStep("transcode", "restore_byte_a0"))
                        encoded_bytes = replaced_bytes
                if config.replace_lossy_sequences and encoding.startswith("sloppy"):
                    replaced_bytes = fixes.replace_lossy_sequences(encoded_bytes)
                    if replaced_bytes != encoded_bytes:
                        transcode_steps.append(ftfy.ExplanationStep("transcode", "replace_lossy_sequences"))
                        encoded_bytes = replaced_bytes
                if 0xED in encoded_bytes or 0xC0 in encoded_bytes:
                    decoding = "utf-8-variants"
                decode_step = ftfy.ExplanationStep("decode", decoding)
                steps = [encode_step, *transcode_steps, decode_step]
                if decoding == "utf-8-variants":
                    fixed = _decode_utf8_variants(encoded_bytes)
                else:
                    fixed = encoded_bytes.decode(decoding)
                return fixed, steps
            except UnicodeDecodeError:
                pass

    # a-hat-euro sequences that remain, fixed in isolation.
    if config.decode_inconsistent_utf8 and chardata.UTF8_DETECTOR_RE.search(text):
        steps = [ftfy.ExplanationStep("apply", "decode_inconsistent_utf8")]
        fixed = _decode_inconsistent_utf8(text, budget)
        if fixed != text:
            return fixed, steps

    # Latin-1 meant as Windows-1252.
    if "latin-1" in possible_1byte_encodings:
        if "windows-1252" in possible_1byte_encodings:
            return text, []
        try:
            fixed = text.encode("latin-1").decode("windows-1252")
            if fixed != text:
                steps = [ftfy.ExplanationStep("encode", "latin-1"), ftfy.ExplanationStep("decode", "windows-1252")]
                return fixed, steps
        except UnicodeDecodeError:
            pass

    # Individual C1 controls.
    if config.fix_c1_controls and chardata.C1_CONTROL_RE.search(text):
        steps = [ftfy.ExplanationStep("transcode", "fix_c1_controls")]
        return fixes.fix_c1_controls(text), steps

    return text, []


def _decode_inconsistent_utf8(text: str, budget: _Budget) -> str:
    # ftfy.fixes.decode_inconsistent_utf8: its ftfy.fix_encoding(substr) draws on the same budget.
    def fix_embedded_mojibake(match: re.Match[str]) -> str:
        substr = match.group(0)
        # Require the match to be shorter, so that this doesn't recurse infinitely.
        if len(substr) < len(text) and is_bad(substr):
            return _fix_encoding(substr, _PLAIN_CONFIG, budget, None, _EMBEDDED_OVERHEAD)
        return substr

    return chardata.UTF8_DETECTOR_RE.sub(fix_embedded_mojibake, text)


def _decode_utf8_variants(data: bytes) -> str:
    """``data.decode("utf-8-variants")`` (ftfy's codec), walking offsets instead of slices.

    ftfy's ``IncrementalDecoder._buffer_decode`` hands ``input[position:]`` to every step, a copy of
    everything left for every NUL or surrogate sequence: quadratic. The steps here are the same,
    at ``pos`` in the one buffer; the regular expressions give the same matches, since none of
    them looks behind its start and ``$`` still means the end of the input.
    """
    out = []
    pos = 0
    while True:
        decoded, consumed = _utf8_variants_step(data, pos)
        if consumed == 0:
            break
        out.append(decoded)
        pos += consumed
    if pos != len(data):  # ftfy asserts the same: a final decode consumes everything
        raise AssertionError("utf-8-variants decoding stopped before the end of its input")
    return "".join(out)


def _utf8_variants_step(data: bytes, pos: int) -> tuple[str, int]:
    # ftfy.bad_codecs.utf8_variants.IncrementalDecoder._buffer_decode_step, with final=True.
    utf8 = codecs.utf_8_decode
    match = utf8_variants.SPECIAL_BYTES_RE.search(data, pos)
    if match is None:
        return utf8(data[pos:], "strict", True)
    cutoff = match.start()
    if cutoff > pos:
        return utf8(data[pos:cutoff], "strict", True)
    if data.startswith(b"\xc0", pos):
        if len(data) - pos > 1:
            return "\u0000", 2
        return utf8(data[pos:], "strict", True)
    # _buffer_decode_surrogates
    if len(data) - pos < 6:
        return utf8(data[pos:], "strict", True)
    if utf8_variants.CESU8_RE.match(data, pos):
        codepoint = (
            ((data[pos + 1] & 0x0F) << 16)
            + ((data[pos + 2] & 0x3F) << 10)
            + ((data[pos + 4] & 0x0F) << 6)
            + (data[pos + 5] & 0x3F)
            + 0x10000
        )
        return chr(codepoint), 6
    return utf8(data[pos : pos + 3], "strict", False)

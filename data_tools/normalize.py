"""Text normalization before the quality filters and dedup (data_tools.clean's first step).

In this order, each step a pure function of the text, repeated until nothing changes, so the
whole is idempotent (`normalize(normalize(t)) == normalize(t)`, tested with hypothesis):
  1. mojibake repair with ftfy (`ftfy.fix_text`): text decoded with the wrong codec
     ("CafÃ©" -> "Café"), terminal escape codes, C1 controls, surrogates. Only the repairs:
     ftfy's defaults also straighten curly quotes, widen/narrow full-width characters and
     expand ligatures, which change correct text; those are left off, and HTML entities are
     left as they are (`&lt;` in source code is what the author wrote).
  2. Unicode normalization, NFC by default: canonical composition only ("e" + combining acute
     -> "é"), never changing what a character means. NFKC (`unicode_form="NFKC"`) also folds
     compatibility characters (full-width Ａ -> A, ligature ﬁ -> fi, "…" -> "...", but also
     x² -> x2 and ½ -> 1⁄2), which loses meaning; choose it for web text where those are noise.
  3. Line endings: CRLF, CR, form feed, vertical tab, NEL, U+2028/U+2029 -> "\\n".
  4. Control characters: every other C0/C1 control and DEL removed (tab and newline kept), and the
     byte-order mark.
  5. Whitespace: trailing spaces and tabs of every line removed, runs of blank lines cut to one
     (a paragraph break is exactly "\\n\\n"), blank lines at the start and end removed. Spaces
     inside a line and leading indentation are kept: code is part of the corpus.
"""

from __future__ import annotations

import re
import unicodedata

UNICODE_FORMS = ("NFC", "NFKC")
_LINE_BREAKS = re.compile(r"\r\n|[\r\f\v\x85\u2028\u2029]")
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff]")  # \t \n kept; \x0b \x0c \x85 are breaks
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")
_TERMINAL_ESCAPES = re.compile(r"\033\[((?:\d|;)*)([a-zA-Z])")  # ftfy's own pattern

_FTFY_CONFIG = None


def _ftfy_config(form: str):
    import ftfy  # only the cleaning stage needs it

    return ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False, fix_latin_ligatures=False,
                                fix_character_width=False, normalization=form, explain=False)


def normalize(text: str, form: str = "NFC", fix_mojibake: bool = True) -> str:
    """`text` repaired, Unicode-normalized (`form`: NFC or NFKC) and with clean line breaks and
    whitespace (the module docstring lists every step).

    One pass is not always a fixed point: a step can uncover work for an earlier one (ftfy reads
    "\rÂ 0" differently from "Â 0", which it repairs to a no-break space). Non-ASCII text is
    passed again until nothing changes (almost always once more); ASCII text is done in one."""
    once = _one_pass(text, form, fix_mojibake)
    if once.isascii():
        return once
    for _ in range(4):
        again = _one_pass(once, form, fix_mojibake)
        if again == once:
            break
        once = again
    return once


def _one_pass(text: str, form: str, fix_mojibake: bool) -> str:
    global _FTFY_CONFIG
    if fix_mojibake and text.isascii():
        # ASCII has no mojibake to repair; of ftfy's repairs only the terminal escapes apply (the
        # rest below is ours), and ftfy's per-line work would cost ~40% of the whole cleaning.
        text = _TERMINAL_ESCAPES.sub("", text)
    elif fix_mojibake:
        if _FTFY_CONFIG is None or _FTFY_CONFIG.normalization != form:
            _FTFY_CONFIG = _ftfy_config(form)
        import ftfy

        text = ftfy.fix_text(text, _FTFY_CONFIG)
    text = unicodedata.normalize(form, text)
    text = _LINE_BREAKS.sub("\n", text)
    text = _CONTROLS.sub("", text)
    text = _TRAILING.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    text = text.strip("\n")
    # Removing a control character can join two characters into a new composable pair: compose
    # again, so a second pass finds nothing to do (idempotence).
    return unicodedata.normalize(form, text)

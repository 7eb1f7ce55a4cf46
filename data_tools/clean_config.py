"""Every threshold of data_tools.clean in one typed config, with Gopher's numbers as defaults.

The defaults are Rae et al. 2021 (arXiv 2112.11446), appendix A, table A1 (MassiveText), the
same numbers as datatrove's GopherQualityFilter / GopherRepetitionFilter. A threshold set to
None switches its rule off (`--set max_words=none`, or `--off RULE`). `validate()` returns every
problem as one line, before any document is read.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields

from data_tools.errors import DataToolsError
from data_tools.normalize import UNICODE_FORMS

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
WORD_SPLITTERS = ("whitespace", "datatrove")
FRACTIONS = {"max_bullet_lines", "max_ellipsis_lines", "min_alpha_words", "max_dup_para_frac", "max_dup_para_chars",
             "max_dup_line_frac", "max_dup_line_chars", *(f"max_top_{n}gram_chars" for n in (2, 3, 4)),
             *(f"max_dup_{n}gram_chars" for n in range(5, 11))}


@dataclass
class CleanConfig:
    # -- normalize (data_tools.normalize)
    unicode_form: str = "NFC"
    """NFC (canonical, lossless) or NFKC (also folds compatibility characters: full width, ligatures)."""
    fix_mojibake: bool = True
    """Repair wrongly decoded text with ftfy."""

    # -- C4's line filters (data_tools.c4_lines), off by default
    c4_lines: bool = False
    """Keep only lines ending in terminal punctuation, of 3+ words, without javascript/cookie notices;
    drop documents with "lorem ipsum", "{" or under 5 sentences left (C4, Raffel et al. 2020)."""
    c4_min_words_per_line: int = 3
    c4_min_sentences: int = 5

    # -- quality (data_tools.gopher_quality); Gopher: "between 50 and 100,000 words" ...
    word_splitter: str = "whitespace"
    """What a word is: "whitespace" (tokens between spaces, as the paper's word counts), or
    "datatrove" (datatrove's spaCy tokenizer: every punctuation mark a word; needs datatrove and spacy)."""
    min_words: int | None = 50
    """Fewer words (not counting words of punctuation only) removes the document."""
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3
    """Mean length of the (non-punctuation) words, in characters: outside [min, max] removes."""
    max_mean_word_length: float | None = 10
    max_hash_ratio: float | None = 0.1
    """'#' characters per word above this removes."""
    max_ellipsis_ratio: float | None = 0.1
    """'...' and '…' per word above this removes."""
    max_bullet_lines: float | None = 0.9
    """Fraction of lines starting with a bullet ('•' or '-') above this removes."""
    max_ellipsis_lines: float | None = 0.3
    """Fraction of lines ending with '...' or '…' above this removes."""
    min_alpha_words: float | None = 0.8
    """Fraction of words with an alphabetic character below this removes."""
    min_stop_words: int | None = 2
    """Fewer distinct stop words than this removes ("ostensibly English documents with no coherent English")."""
    stop_words: tuple[str, ...] = STOP_WORDS

    # -- repetition (data_tools.gopher_repetition)
    max_dup_para_frac: float | None = 0.3
    """Fraction of paragraphs (split at blank lines) that repeat an earlier one."""
    max_dup_para_chars: float | None = 0.2
    """Characters in repeated paragraphs / characters in the document."""
    max_dup_line_frac: float | None = 0.3
    max_dup_line_chars: float | None = 0.2
    max_top_2gram_chars: float | None = 0.20
    """Characters of the most frequent word 2-gram (times its count) / characters in the document."""
    max_top_3gram_chars: float | None = 0.18
    max_top_4gram_chars: float | None = 0.16
    max_dup_5gram_chars: float | None = 0.15
    """Characters in repeated word 5-grams (each counted once) / characters in the document."""
    max_dup_6gram_chars: float | None = 0.14
    max_dup_7gram_chars: float | None = 0.13
    max_dup_8gram_chars: float | None = 0.12
    max_dup_9gram_chars: float | None = 0.11
    max_dup_10gram_chars: float | None = 0.10

    # -- dedup and the manifest
    exact_dedup: bool = True
    """Drop a document whose normalized text equals an earlier one's (any input)."""
    near_dedup: bool = True
    """Drop near duplicates with MinHash LSH (data_tools.near_dedup): the first of each cluster is kept."""
    minhash_shingle_words: int = 5
    """Shingles are word n-grams of this n."""
    minhash_permutations: int = 112
    """Signature length; must equal minhash_bands x minhash_rows."""
    minhash_bands: int = 14
    """b: more bands lower the effective threshold (1/b)^(1/r)."""
    minhash_rows: int = 8
    """r: more rows per band raise it (14 x 8 ~ 0.72, datatrove's; 20 x 13 ~ 0.79, NeMo Curator's)."""
    minhash_seed: int = 1
    decontam_ngram: int = 13
    """With --decontaminate EVAL...: a document sharing a word n-gram of this n with them (GPT-3: 13)."""
    decontam_action: str = "drop"
    """drop: remove such documents ("contaminated"); report: keep them and list them in the manifest."""
    samples_per_rule: int = 5
    """Removed documents kept in the manifest per rule, for a human to read (a seeded sample)."""
    sample_chars: int = 2000
    """Each sampled document cut to this many characters."""
    seed: int = 0

    stop_word_set: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self):
        self.stop_words = tuple(self.stop_words)
        self.stop_word_set = frozenset(self.stop_words)

    def top_ngrams(self) -> list[tuple[int, float]]:
        return [(n, t) for n in (2, 3, 4) if (t := getattr(self, f"max_top_{n}gram_chars")) is not None]

    def dup_ngrams(self) -> list[tuple[int, float]]:
        return [(n, t) for n in range(5, 11) if (t := getattr(self, f"max_dup_{n}gram_chars")) is not None]

    def validate(self) -> list[str]:
        """Every problem, one line each (empty: fine)."""
        bad = []
        if self.unicode_form not in UNICODE_FORMS:
            bad.append(f"unicode_form={self.unicode_form!r}: one of {', '.join(UNICODE_FORMS)}")
        if self.word_splitter not in WORD_SPLITTERS:
            bad.append(f"word_splitter={self.word_splitter!r}: one of {', '.join(WORD_SPLITTERS)}")
        for f in fields(self):
            v = getattr(self, f.name)
            if not f.name.startswith(("max_", "min_")) or v is None:
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                bad.append(f"{f.name}={v!r}: a number >= 0 (or none to switch the rule off)")
            elif f.name in FRACTIONS and v > 1:
                bad.append(f"{f.name}={v}: a fraction, at most 1")
        for lo, hi in (("min_words", "max_words"), ("min_mean_word_length", "max_mean_word_length")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                bad.append(f"{lo}={a} > {hi}={b}: nothing could pass; lower {lo} or raise {hi}")
        if self.min_stop_words is not None and self.min_stop_words > len(set(self.stop_words)):
            bad.append(f"min_stop_words={self.min_stop_words} > the {len(set(self.stop_words))} stop words given")
        if self.decontam_action not in ("drop", "report"):
            bad.append(f"decontam_action={self.decontam_action!r}: drop or report")
        for name in ("minhash_shingle_words", "minhash_permutations", "minhash_bands", "minhash_rows", "decontam_ngram",
                     "c4_min_words_per_line", "c4_min_sentences"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad.append(f"{name}={getattr(self, name)!r}: a whole number >= 1")
        if not bad and self.minhash_bands * self.minhash_rows != self.minhash_permutations:
            bands, rows = self.minhash_bands, self.minhash_rows
            bad.append(f"minhash_bands x minhash_rows = {bands} x {rows} = {bands * rows}, not "
                       f"minhash_permutations={self.minhash_permutations}; make them equal")
        if self.samples_per_rule < 0 or self.sample_chars < 0:
            bad.append("samples_per_rule and sample_chars: must be >= 0")
        return bad

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


RULE_FIELDS = {  # rule name (in the manifest) -> the thresholds that switch it off when all are None
    "words": ("min_words", "max_words"), "mean_word_length": ("min_mean_word_length", "max_mean_word_length"),
    "hash_ratio": ("max_hash_ratio",), "ellipsis_ratio": ("max_ellipsis_ratio",),
    "bullet_lines": ("max_bullet_lines",), "ellipsis_lines": ("max_ellipsis_lines",),
    "alpha_words": ("min_alpha_words",), "stop_words": ("min_stop_words",),
    "dup_para_frac": ("max_dup_para_frac",), "dup_para_chars": ("max_dup_para_chars",),
    "dup_line_frac": ("max_dup_line_frac",), "dup_line_chars": ("max_dup_line_chars",),
    **{f"top_{n}gram_chars": (f"max_top_{n}gram_chars",) for n in (2, 3, 4)},
    **{f"dup_{n}gram_chars": (f"max_dup_{n}gram_chars",) for n in range(5, 11)},
}
FLAGS = ("exact_dedup", "near_dedup", "fix_mojibake")  # --off RULE sets these False
GROUPS = {"quality": [r for r in RULE_FIELDS][:8], "repetition": [r for r in RULE_FIELDS][8:]}


def _parse_value(name: str, text: str, default):
    if text.lower() in ("none", "off", "null"):
        return None
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError("true or false")
        return text.lower() in ("true", "1")
    if isinstance(default, int) and not name.endswith("word_length"):
        return int(text)
    if isinstance(default, (int, float)):
        return float(text)
    if isinstance(default, tuple):
        return tuple(w for w in text.split(",") if w)
    return text


def build_config(rules_file: str | None = None, sets: list[str] = (), off: list[str] = ()) -> CleanConfig:
    """CleanConfig from defaults < a TOML file of fields < `--set NAME=VALUE` < `--off RULE`; every
    problem (unknown name, bad value, thresholds that make no sense) in one DataToolsError, a line each."""
    names = {f.name: f for f in fields(CleanConfig) if f.init}
    defaults = CleanConfig()
    values, bad = {}, []
    if rules_file is not None:
        try:
            with open(rules_file, "rb") as fh:
                doc = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise DataToolsError(f"{rules_file}: not a readable TOML rules file ({e})") from None
        for k, v in doc.get("clean", doc).items():
            if k not in names:
                bad.append(f"{rules_file}: unknown rule setting {k!r}")
            else:
                values[k] = tuple(v) if isinstance(v, list) else v
    for item in sets:
        k, eq, v = item.partition("=")
        if not eq or k not in names:
            bad.append(f"--set {item}: expected NAME=VALUE with NAME one of the CleanConfig fields"
                       if not eq else f"--set {item}: unknown setting {k!r}")
            continue
        try:
            values[k] = _parse_value(k, v, getattr(defaults, k))
        except ValueError as e:
            bad.append(f"--set {item}: not a valid value ({e})")
    for rule in off:
        targets = GROUPS.get(rule, [rule])
        if any(t not in RULE_FIELDS for t in targets) and rule not in FLAGS:
            bad.append(f"--off {rule}: unknown rule; rules: quality, repetition, exact_dedup, near_dedup, "
                       "fix_mojibake, " + ", ".join(RULE_FIELDS))
            continue
        if rule in FLAGS:
            values[rule] = False
        for t in targets if rule in GROUPS or rule in RULE_FIELDS else []:
            values.update({f: None for f in RULE_FIELDS[t]})
    cfg = dataclasses.replace(defaults, **values)  # values holds known fields only
    bad += cfg.validate()
    if not bad:
        return cfg
    raise DataToolsError("bad cleaning rules:\n  " + "\n  ".join(bad) if len(bad) > 1 else bad[0])

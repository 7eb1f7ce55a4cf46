"""Rules that map megatron-core state dict keys to Hugging Face ones, and both directions from them.

An architecture's table is a list of `Rule`s: megatron keys, HF keys, and a transform (see
`transforms`) whose `to_hf` (export) and `from_hf` (import) are exact inverses, so a layout fix
lands in both at once and `from_hf(to_hf(sd, rules), rules)` gives back every exported tensor of
`sd` bit for bit. Both directions are strict: an input tensor no rule covers, or a rule's tensor
missing from the input, is refused with a one-line ValueError naming the keys (a shard short of
tensors must not load as a half-initialised model). Megatron's `*_extra_state` entries are no
weights and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtds.hf.transforms import Same

EXTRA_STATE = "_extra_state"


@dataclass(frozen=True)
class Rule:
    """megatron keys `ours` <-> HF keys `theirs`, converted by `transform` (tensors in key order).

    No HF keys (`dropped`) marks megatron tensors with no place in the HF model: export leaves them
    out, and an importer cannot recreate them, it has to initialise them fresh (`not_exported`)."""

    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    transform: object = Same()


def rule(ours: str, theirs: str | tuple[str, ...], transform: object = Same()) -> Rule:
    """A Rule for one megatron key (the common case)."""
    return Rule((ours,), (theirs,) if isinstance(theirs, str) else theirs, transform)


def dropped(*ours: str) -> Rule:
    """Megatron tensors left out on export."""
    return Rule(ours, ())


def not_exported(rules: list[Rule]) -> list[str]:
    """The megatron keys `from_hf` cannot give back: an importer initialises these fresh."""
    return [key for r in rules if not r.theirs for key in r.ours]


def to_hf(state: dict, rules: list[Rule]) -> dict:
    """HF state dict for a megatron state dict."""
    _check(state, [k for r in rules for k in r.ours], "megatron", "Hugging Face")
    out = {}
    for r in rules:
        if r.theirs:
            out.update(_convert(r.ours, r.theirs, r.transform.to_hf, state))
    return out


def from_hf(hf_state: dict, rules: list[Rule], consume: bool = False) -> dict:
    """megatron state dict for an HF state dict, less the `not_exported` keys. `consume`: take each
    rule's tensors out of `hf_state` as it converts them (an import then holds one copy, not two)."""
    _check(hf_state, [k for r in rules for k in r.theirs], "Hugging Face", "megatron")
    out = {}
    for r in rules:
        if r.theirs:
            out.update(_convert(r.theirs, r.ours, r.transform.from_hf, hf_state, consume))
    return out


def _convert(sources: tuple, targets: tuple, direction, state: dict, consume: bool = False) -> dict:
    try:
        produced = direction(tuple(state.pop(k) if consume else state[k] for k in sources))
    except ValueError as e:  # a transform's import check: name the tensors
        raise ValueError(f"{', '.join(sources)}: {e}") from None
    return dict(zip(targets, produced, strict=True))


def _check(state: dict, wanted: list[str], side: str, other: str) -> None:
    """Refuse an input that lacks a tensor the rules read, or holds one they do not map."""
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"{side} state dict lacks {_some(missing)}")
    covered = set(wanted)
    unmapped = [k for k in state if k not in covered and not k.endswith(EXTRA_STATE)]
    if unmapped:
        raise ValueError(f"no {other} counterpart for {side} tensors {_some(unmapped)}")


def _some(keys: list[str], shown: int = 4) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more

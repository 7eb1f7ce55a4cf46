"""Reading a Hugging Face config.json for import: every field read is checked, and a value mtds
cannot express is a ValueError naming the field (mtds.import_hf turns it into one line)."""

from __future__ import annotations

_MISSING = object()


class Fields:
    """A config.json dict; `get` a field (required unless a default is given), `require` a value."""

    def __init__(self, hf: dict):
        self.hf = hf

    def get(self, key: str, default=_MISSING):
        value = self.hf.get(key, default)
        if value is _MISSING:
            raise ValueError(f"{key}: missing (a config.json of this architecture has it)")
        return default if value is None and default is not _MISSING else value

    def require(self, key: str, wanted, default=_MISSING, why: str = "") -> None:
        value = self.get(key, default)
        if value != wanted:
            raise ValueError(f"{key}={value!r}: mtds supports only {wanted!r}" + (f" ({why})" if why else ""))

"""Session-wide fixtures shared by the test modules (helpers live in tests/helpers.py)."""

from __future__ import annotations

import pytest

from helpers import build_tiny_data


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """Small corpus, 512-piece tokenizer, `_document` and `_sentence` .bin/.idx; built once."""
    return build_tiny_data(str(tmp_path_factory.mktemp("tiny_data")), sentences=True)

"""ResumableBatchSampler: rank sharding and resuming at a consumed-sample count."""

import os

import pytest

from mtds.data.loader import ResumableBatchSampler


def batches(total, consumed, micro, rank, size):
    return list(ResumableBatchSampler(total, consumed, micro, rank, size))


def test_ranks_split_each_global_batch_without_overlap():
    r0, r1 = batches(24, 0, 3, 0, 2), batches(24, 0, 3, 1, 2)
    assert r0[:2] == [[0, 1, 2], [6, 7, 8]] and r1[:2] == [[3, 4, 5], [9, 10, 11]]
    seen = sorted(i for b in r0 + r1 for i in b)
    assert seen == list(range(24))


def test_resume_continues_exactly_where_the_straight_run_was():
    straight = batches(40, 0, 2, 1, 2)
    consumed = 3 * 2 * 2  # three global batches of micro 2 x 2 ranks
    assert batches(40, consumed, 2, 1, 2) == straight[3:]


def test_partial_last_global_batch_is_dropped():
    assert len(batches(10, 0, 2, 0, 2)) == 2
    assert len(ResumableBatchSampler(10, 0, 2, 1, 2)) == 2
    assert batches(10, 8, 2, 0, 2) == []


def test_index_cache_off_builds_in_memory(tiny_data, tmp_path, read_only):
    """data.index_cache=false (nodes without a shared filesystem, read-only data): every rank builds
    the indices in memory and writes nothing, neither in the run dir nor next to the data (where
    megatron-core puts a cache when given none), here on a read-only data folder."""
    import shutil

    from mtds.config import build_config
    from mtds.data.sources import resolve_sources
    from mtds.tasks.causal_lm import build_datasets
    from mtds.data.tokenizer import SentencePieceTokenizer

    data = tmp_path / "data"
    data.mkdir()
    for ext in (".bin", ".idx"):
        shutil.copy(tiny_data["prefix"] + ext, data / ("tiny" + ext))
    read_only(data)
    with pytest.raises(OSError):  # read-only for this process too (root included)
        (data / "probe").touch()

    def build(index_cache: bool, run_dir):
        cfg = build_config(overrides={
            "data": {"paths": str(data / "tiny"), "tokenizer_model": tiny_data["tokenizer_model"],
                     "split": "90,10,0", "seq_length": "32", "index_cache": str(index_cache)},
            "training": {"run_dir": str(run_dir)}})
        sources = resolve_sources(cfg, cfg.kind.task.data_layout)
        return build_datasets(cfg, sources, SentencePieceTokenizer(sources.tokenizer_model), [64, 8, 0], 1)

    uncached, cached = build(False, tmp_path / "b"), build(True, tmp_path / "a")
    assert (tmp_path / "a" / "index_cache").is_dir()
    assert not (tmp_path / "b").exists() and sorted(os.listdir(data)) == ["tiny.bin", "tiny.idx"]
    for i in (0, 17, 63):  # same samples either way
        assert (cached[0][i]["tokens"] == uncached[0][i]["tokens"]).all()

"""ResumableBatchSampler: rank sharding and resuming at a consumed-sample count."""

from mtds.data import ResumableBatchSampler


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

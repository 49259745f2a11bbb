"""The sharded training / evaluation sampler."""

from collections import Counter

from train.distributed import ShardedSampler


def shards(length, world, **kwargs):
    return [list(ShardedSampler(length, rank, world, seed=3, **kwargs)) for rank in range(world)]


def test_evaluation_sees_every_sample_once():
    parts = shards(10, 3, shuffle=False)
    assert sorted(i for part in parts for i in part) == list(range(10))


def test_training_epoch_is_a_permutation_cut_to_global_batches():
    parts = shards(50, 2, shuffle=True, global_batch=8)
    seen = [i for part in parts for i in part]
    assert len(seen) == 48 and len(set(seen)) == 48 and all(len(p) == 24 for p in parts)
    sampler = ShardedSampler(50, 0, 2, seed=3, shuffle=True, global_batch=8)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0, skip=5)
    assert list(sampler) == first[5:]


def test_repeated_augmentation():
    """Each image appears 3 times in a row in the permutation, spread over the ranks (SPEC §5.7)."""
    parts = shards(48, 3, shuffle=True, global_batch=12, repeats=3)
    seen = [i for part in parts for i in part]
    assert len(seen) == 48
    counts = Counter(seen)
    assert set(counts.values()) == {3} and len(counts) == 16
    assert all(len(set(part)) == 16 for part in parts)  # the three copies of an image go to three ranks

"""The sharded training / evaluation sampler."""

import random
from collections import Counter

import numpy as np
import torch

from train.distributed import SeededSamples, ShardedSampler, gather_in_order


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


def test_seeded_samples_do_not_depend_on_processes_or_resumes():
    """Each position of an epoch has its own seed: the same (index, seed) pairs under 1 or 4 processes, the
    same pairs after a skip, different seeds for the three copies of an image."""
    (one,) = shards(48, 1, shuffle=True, global_batch=12, repeats=3, seeded=True)
    four = [pair for part in shards(48, 4, shuffle=True, global_batch=12, repeats=3, seeded=True) for pair in part]
    assert sorted(four) == sorted(one) and len({seed for _, seed in four}) == 48
    assert Counter(index for index, _ in one) == Counter(shards(48, 1, shuffle=True, global_batch=12, repeats=3)[0])
    sampler = ShardedSampler(48, 1, 4, seed=3, shuffle=True, global_batch=12, seeded=True)
    full = list(sampler)
    sampler.set_epoch(0, skip=4)
    assert list(sampler) == full[4:]


def test_seeded_samples_draw_from_their_seed_and_restore_the_streams():
    class Noise(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> tuple[float, float, float]:
            return torch.rand(()).item(), float(np.random.rand()), random.random()

    samples = SeededSamples(Noise())
    streams = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    first, again, other = samples[(2, 11)], samples[(3, 11)], samples[(2, 12)]
    assert first == again and first != other
    assert torch.equal(torch.get_rng_state(), streams[0]) and (np.random.get_state()[1] == streams[1]).all()
    assert random.getstate() == streams[2]


def gather_shard(rank: int, world: int, store: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        rows = torch.arange(11 * 2).reshape(11, 2)
        shard = rows[list(ShardedSampler(11, rank, world, seed=0, shuffle=False))]
        torch.save(gather_in_order(shard), f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_evaluation_rows_gathered_in_dataset_order(tmp_path):
    """Three processes' evaluation shards (11 rows, uneven) come back as the one-process order, on every rank."""
    torch.multiprocessing.spawn(gather_shard, args=(3, str(tmp_path / "store"), str(tmp_path / "rows")), nprocs=3)
    for rank in range(3):
        assert torch.equal(torch.load(tmp_path / f"rows.{rank}"), torch.arange(22).reshape(11, 2))

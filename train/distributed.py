"""One process or many under torchrun: the process group, ranks, and a sampler that shards without padding."""

import gc
import os
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


def init(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins torchrun's process group when launched by torchrun (nccl on GPU, gloo on CPU)."""
    if "RANK" not in os.environ:
        return 0, 1
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shutdown(wait: bool = True) -> None:
    """Leave the process group, after the others when ``wait`` (not after a failure: they may be anywhere, and
    torchrun stops them when this process fails); the collection first avoids gloo aborting at destroy time."""
    gc.collect()
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


def gather_in_order(rows: torch.Tensor) -> torch.Tensor:
    """This process's evaluation rows [n_rank, ...] (dataset items rank, rank + world, ...) → every process's
    rows in dataset order [n, ...], the order of a one-process evaluation."""
    if not dist.is_initialized():
        return rows
    shards: list[torch.Tensor] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(shards, rows.cpu())
    ordered = torch.empty((sum(map(len, shards)), *rows.shape[1:]), dtype=rows.dtype)
    for rank, shard in enumerate(shards):
        ordered[rank :: len(shards)] = shard
    return ordered


def check_in_sync(model: torch.nn.Module) -> None:
    """Raise unless every process holds the same parameters (a cheap checksum per process)."""
    if not dist.is_initialized():
        return
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"processes diverged: parameter checksums {[g.item() for g in gathered]}")


class ShardedSampler(Sampler[int]):
    """Each process's share of a dataset, in an order fixed by (seed, epoch), without duplicated samples.

    shuffle=True: a permutation per epoch, cut to whole global batches (drop_last), rank r takes every
    world-th index; ``skip`` drops this process's first indices (resuming inside an epoch). With ``repeats``
    > 1 (repeated augmentation, SPEC §5.7) each index of the permutation appears ``repeats`` times in a row
    before the ranks take their turns, and an epoch still has the same number of samples (fewer distinct ones).
    shuffle=False (evaluation): index order, rank r takes r, r + world, ...: every sample exactly once.
    ``seeded`` (training): items are (index, seed) pairs for :class:`SeededSamples`, the seed a function of
    (seed, epoch, position in the epoch), so augmentations do not depend on workers, processes or resumes.
    """

    def __init__(
        self,
        length: int,
        rank: int,
        world: int,
        seed: int,
        shuffle: bool,
        global_batch: int = 1,
        repeats: int = 1,
        seeded: bool = False,
    ) -> None:
        self.length, self.rank, self.world, self.seed, self.shuffle = length, rank, world, seed, shuffle
        self.global_batch, self.repeats, self.seeded = global_batch, repeats, seeded
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int] | list[tuple[int, int]]:
        if not self.shuffle:
            return list(range(self.rank, self.length, self.world))
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 10007 + self.epoch))
        usable = self.length // self.global_batch * self.global_batch
        indices = order.repeat_interleave(self.repeats)[:usable][self.rank :: self.world].tolist()
        if self.seeded:
            base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
            positions = range(self.rank, usable, self.world)
            return list(zip(indices, (base + p for p in positions), strict=True))[self.skip :]
        return indices[self.skip :]

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class SeededSamples(Dataset):
    """Items by (index, seed) from a seeded :class:`ShardedSampler`: the random streams of the transforms
    (torch, numpy, random) are seeded per sample for ``dataset[index]`` and restored after it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        states = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):  # the caller's streams come back unchanged
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(states[0])
                np.random.set_state(states[1])

"""The collectives of a run across several processes (`collapse run nproc=N`, experiment/distributed.py):
where ranks split work and meet again.

    train     DistributedDataParallel: every rank takes its share of each global batch
    generate  rank r decodes chunks r, r+N, ...; all ranks gather them back in chunk order
    evaluate  rank r scores batches r, r+N, ...; the same gather

Below the families, which call them, and above ranks.py. Without a process group (the default
nproc=1) every helper here is the identity, and the code reads like single-device code. Launching
the workers stays in experiment/distributed.py.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from collapse_cli.ranks import active, rank, world_size
from collapse_cli.ranks import process_group as _group

if TYPE_CHECKING:
    import torch


def local_rank() -> int:
    """The GPU of this process on its machine (one machine: its rank)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def barrier() -> None:
    if active():
        _group().barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module to train through: DDP (gradients averaged across ranks) when distributed, else the model."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_batch(rows: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's rows of a global batch, and the weight of its mean loss.

    DDP averages gradients over ranks; weighting each rank's mean loss by its share of the batch
    (times N) makes that average the gradient of the global batch's mean loss, as with one process,
    also when the batch does not split evenly. A rank left without rows (a last batch smaller
    than N) runs one row with weight 0, since every rank must take part in every step.
    """
    n_ranks = world_size()
    if n_ranks == 1:
        return rows, 1.0
    mine = rows[rank()::n_ranks]
    if len(mine) == 0:
        return rows[:1], 0.0
    return mine, len(mine) * n_ranks / len(rows)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average of a tensor over ranks (every rank gets it); the tensor itself without a group."""
    if not active():
        return value
    total = value.detach().clone()
    _group().all_reduce(total)
    return total / world_size()


def my_items(n_items: int) -> range:
    """The items (chunks, batches) of this rank: r, r+N, r+2N, ..."""
    return range(rank(), n_items, world_size())


def gather_items(mine: list, n_items: int) -> list:
    """Every rank's results of `my_items(n_items)`, on every rank, back in item order."""
    if not active():
        return mine
    by_rank: list = [None] * world_size()
    _group().all_gather_object(by_rank, mine)
    return [by_rank[k % world_size()][k // world_size()] for k in range(n_items)]

"""Where this process sits in a (possibly) distributed run.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain `python` process is rank 0 of 1. The
engine takes a :class:`DistInfo` explicitly so that only rank 0 writes files and draws progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def all_reduce_sum(tensor, dist: DistInfo):
    """Sum a device tensor over all ranks (in place); a no-op on one process."""
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor

"""Distributed pieces that need no process group: sharding, un-sharding, launch checks, no_sync."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from tocha.engine import distributed
from tocha.engine.batches import DeviceTransform, LoaderBatches, ResidentBatches, TensorItems
from tocha.engine.distributed import DistInfo, from_env, shard, unshard
from tocha.engine.loop import train_loop
from tocha.errors import UserError
from tocha.harness import scale

CPU = torch.device("cpu")


@pytest.mark.parametrize("n", [1, 7, 10, 359])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_equal_in_size_and_unshard_restores_the_order(n, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    parts = [shard(order, r, world) for r in range(world)]
    assert len({len(p) for p in parts}) == 1  # equal shares: no rank waits for another
    assert set(torch.cat(parts).tolist()) == set(order.tolist())  # every sample is somewhere
    assert torch.equal(unshard(parts, n), order)  # gathered back: each sample once, in order


def _resident(x, y, batch, rank, world, train=True):
    return ResidentBatches(
        x,
        y,
        batch,
        device=CPU,
        transform=DeviceTransform(None, None, device=CPU),
        train=train,
        seed=3,
        rank=rank,
        world_size=world,
    )


@pytest.mark.parametrize("world", [2, 3])
def test_a_global_batch_holds_the_same_samples_on_any_number_of_ranks(world):
    n, global_batch = 359, 24
    x, y = torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n)
    single = [yb for _, yb in _resident(x, y, global_batch, 0, 1)]
    ranks = [[yb for _, yb in _resident(x, y, global_batch // world, r, world)] for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)  # same steps per epoch, so the same schedule
    for i, whole in enumerate(single[:-1]):  # the last batch differs only by the wrap-around padding
        together = torch.cat([r[i] for r in ranks])
        assert sorted(together.tolist()) == sorted(whole.tolist())


def test_dataloader_path_shards_like_the_resident_path():
    n, world = 101, 2
    x, y = torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n)
    for rank in range(world):
        resident = [yb for _, yb in _resident(x, y, 16, rank, world)]
        loader = LoaderBatches(
            TensorItems(x, y),
            16,
            device=CPU,
            transform=DeviceTransform(None, None, device=CPU),
            train=True,
            seed=3,
            rank=rank,
            world_size=world,
        )
        loader.set_epoch(0)
        assert [b.tolist() for b in resident] == [yb.tolist() for _, yb in loader]


def test_environment_without_a_rendezvous_address_is_a_clear_error():
    with pytest.raises(UserError, match="MASTER_ADDR and MASTER_PORT are not set") as info:
        from_env({"WORLD_SIZE": "2", "RANK": "0"})
    assert "torchrun" in str(info.value)
    with pytest.raises(UserError, match="RANK=2 and WORLD_SIZE=2"):
        from_env({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert from_env({}) == DistInfo()
    assert from_env(
        {
            "WORLD_SIZE": "4",
            "RANK": "3",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "1",
        }
    ) == DistInfo(3, 4, 1, 2)


def test_backend_that_is_not_available_is_a_clear_error():
    with pytest.raises(UserError, match="backend nccl is not available: training runs on the CPU"):
        distributed.choose_backend("nccl", "cpu")
    assert distributed.choose_backend("auto", "cpu") == "gloo"


def test_settings_that_cannot_be_split_over_the_processes_are_refused():
    two = DistInfo(0, 2)
    with pytest.raises(UserError, match="batch_size=129 cannot be split evenly over 2 processes") as info:
        scale.check_settings(two, batch_size=129, device="auto", on_nonfinite="stop")
    assert "130 or 128" in str(info.value)
    with pytest.raises(UserError, match="device=cuda:1 names one GPU"):
        scale.check_settings(two, batch_size=128, device="cuda:1", on_nonfinite="stop")
    with pytest.raises(UserError, match="on_nonfinite=skip"):
        scale.check_settings(two, batch_size=128, device="cpu", on_nonfinite="skip")
    scale.check_settings(DistInfo(), batch_size=129, device="cuda:1", on_nonfinite="skip")  # one process: all fine


class CountingNoSync(nn.Module):
    """Stands in for DDP: counts the micro-batches that ran inside no_sync()."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module, self.skipped_syncs, self.inside = module, 0, False

    @contextlib.contextmanager
    def no_sync(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False

    def forward(self, x):
        self.skipped_syncs += self.inside
        return self.module(x)


def test_gradient_accumulation_skips_the_all_reduce_on_all_but_the_last_micro_batch():
    x, y = torch.randn(320, 5), torch.randint(0, 3, (320,))
    model = CountingNoSync(nn.Linear(5, 3))
    batches = _resident(x, y, 32, 0, 1)  # 10 micro-batches: groups of 4, 4 and a short one of 2
    train_loop(
        model,
        batches,
        device=CPU,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scheduler=None,
        epochs=1,
        loss_fn=nn.CrossEntropyLoss(),
        grad_accum_steps=4,
    )
    assert model.skipped_syncs == 3 + 3 + 1

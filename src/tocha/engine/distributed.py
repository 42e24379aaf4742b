"""Where this process sits in a (possibly) distributed run, and the few collectives tocha uses.

torchrun (or `tocha train --nproc N`, which starts torchrun's launcher) sets RANK / WORLD_SIZE /
LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT; a plain `python` process is rank 0 of 1
and never touches torch.distributed. The engine takes a :class:`DistInfo` explicitly so that only
rank 0 writes files and draws progress.

Data is split between ranks by striding one shared order (`shard`), padded to a multiple of the
world size by wrapping around, as DistributedSampler does: every rank then has the same number of
batches (an uneven count would leave one rank waiting in a collective forever). Evaluation undoes
the padding (`gather_for_metrics`), so metrics count each sample exactly once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from tocha.errors import UserError

BACKENDS = ("auto", "nccl", "gloo")
ERROR_KEY = "tocha/error/"  # + rank: the store key where a failing rank leaves its error for the others


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class RankFailed(Exception):
    """A collective failed because another rank died, raised or stopped answering within the timeout."""


def _env_int(env: dict, name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(
            f"environment variable {name}={text!r} is not a whole number",
            fix="launch with torchrun (or tocha train --nproc N), which sets it",
        ) from None


def from_env(env: dict | None = None) -> DistInfo:
    """The launcher's environment as a DistInfo; a multi-process launch without a rendezvous address is an error."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", world if world > 1 else 1)
    if world < 1 or not 0 <= rank < world:
        raise UserError(
            f"RANK={rank} and WORLD_SIZE={world} do not describe a process group",
            fix="launch with torchrun, which sets both (0 <= RANK < WORLD_SIZE)",
        )
    if world > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if missing:
            raise UserError(
                f"WORLD_SIZE={world} asks for several processes but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set",
                fix="launch with torchrun (it sets them), or tocha train --nproc N on one machine, or "
                "set MASTER_ADDR to rank 0's host name and MASTER_PORT to a free port on it",
            )
    return DistInfo(rank, world, local_rank, local_world)


def choose_backend(requested: str, device_type: str) -> str:
    """nccl for CUDA, gloo for CPU; an explicit choice is checked against what this torch build has."""
    import torch.distributed as tdist

    if not tdist.is_available():
        raise UserError(
            "this PyTorch build has no torch.distributed",
            where="several processes",
            fix="install a PyTorch build with distributed support, or run one process",
        )
    backend = requested if requested != "auto" else ("nccl" if device_type == "cuda" else "gloo")
    if backend == "nccl" and (device_type != "cuda" or not tdist.is_nccl_available()):
        why = "training runs on the CPU" if device_type != "cuda" else "this PyTorch build has no NCCL"
        raise UserError(
            f"backend nccl is not available: {why}",
            where="config key dist.backend",
            allowed=", ".join(BACKENDS),
            fix="use dist.backend=auto (gloo on CPU, nccl on CUDA)",
        )
    if backend == "gloo" and not tdist.is_gloo_available():
        raise UserError(
            "backend gloo is not available in this PyTorch build",
            where="config key dist.backend",
            allowed=", ".join(BACKENDS),
            fix="use dist.backend=nccl on CUDA",
        )
    return backend


def init(dist: DistInfo, backend: str, timeout_s: float, device) -> None:
    """Join the process group; every later collective fails after `timeout_s` instead of hanging."""
    import datetime

    import torch.distributed as tdist

    if dist.world_size == 1 or tdist.is_initialized():
        return
    kwargs = {"device_id": device} if backend == "nccl" else {}
    try:
        tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    except (RuntimeError, ValueError) as exc:  # DistNetworkError/DistStoreError are RuntimeErrors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RankFailed(
            f"rank {dist.rank}: could not join the process group at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within "
            f"{timeout_s:g} s ({first}); check that every rank was started and can reach "
            "MASTER_ADDR"
        ) from None


def shutdown() -> None:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(tensor, dist: DistInfo):
    """Sum a device tensor over all ranks (in place); a no-op on one process."""
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def agree_max(value: int, dist: DistInfo, device) -> int:
    """The largest `value` over all ranks (e.g. a pending stop signal), so every rank decides alike."""
    if dist.world_size == 1:
        return value
    import torch
    import torch.distributed as tdist

    t = torch.tensor([value], dtype=torch.long, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return int(t.item())


def broadcast_object(obj, dist: DistInfo):
    """Rank 0's `obj` on every rank (pickled through the process group; rank 0's own objects only)."""
    if dist.world_size == 1:
        return obj
    import torch.distributed as tdist

    box = [obj if dist.is_main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def shard(order, rank: int, world_size: int):
    """Rank `rank`'s part of `order`: padded by wrapping to a multiple of `world_size`, then strided.

    Batch i of every rank together hold positions [i*B, (i+1)*B) of the padded order (B = the
    global batch), so the samples of a global batch do not depend on how many ranks share it.
    """
    if world_size == 1:
        return order
    n = len(order)
    padded = -(-n // world_size) * world_size
    if padded > n and n:
        order = order.repeat(-(-padded // n))[:padded]  # repeat, not one slice: fewer samples than ranks wrap twice
    return order[rank::world_size]


def gather_for_metrics(local, total: int, dist: DistInfo, device):
    """Every rank's shard of an evaluation, in the original sample order, padded duplicates dropped.

    `local` holds this rank's rows for `shard(arange(total), rank, world)`; the result has `total`
    rows on every rank, so metrics count each sample exactly once (as Accelerate's
    `gather_for_metrics` does).
    """
    if dist.world_size == 1:
        return local
    import torch
    import torch.distributed as tdist

    on_device = local.to(device).contiguous()
    parts = [torch.empty_like(on_device) for _ in range(dist.world_size)]
    tdist.all_gather(parts, on_device)
    return unshard(parts, total).to(local.device)


def unshard(parts: list, total: int):
    """The inverse of `shard` over all ranks' parts: the first `total` rows in the original order."""
    import torch

    # Row j of rank r is padded position j * world + r: interleave, then cut the wrapped-around tail.
    merged = torch.stack(parts, dim=1).reshape(-1, *parts[0].shape[1:])
    return merged[:total]


# ---------------------------------------------------------------- failures


def _store():
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except Exception:  # no group, or a torch without this helper: the report just lacks the other rank's words
        return None


def publish_error(dist: DistInfo, message: str) -> None:
    """Leave this rank's error where the other ranks look when their next collective fails."""
    store = _store() if dist.world_size > 1 else None
    if store is None:
        return
    try:
        store.set(f"{ERROR_KEY}{dist.rank}", message[:2000])
    except Exception:  # the store may be gone with the rank that hosted it
        pass


def reported_errors(dist: DistInfo, wait_s: float = 2.0) -> dict[int, str]:
    """Errors other ranks published (waiting briefly: a failing rank may still be writing its own)."""
    store = _store()
    if store is None:
        return {}
    found: dict[int, str] = {}
    deadline = time.monotonic() + wait_s
    others = [r for r in range(dist.world_size) if r != dist.rank]
    while True:
        for r in others:
            try:
                if r not in found and store.check([f"{ERROR_KEY}{r}"]):
                    found[r] = store.get(f"{ERROR_KEY}{r}").decode(errors="replace")
            except Exception:
                return found
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def is_collective_failure(exc: BaseException) -> bool:
    """A failure of the process group itself (a peer gone, a timeout), not of this rank's own work."""
    import torch.distributed as tdist

    if isinstance(exc, tdist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        word in text
        for word in (
            "Connection closed by peer",
            "Connection reset by peer",
            "Timed out",
            "timed out",
            "gloo",
            "NCCL",
            "ProcessGroup",
        )
    )


def explain_failure(exc: BaseException, dist: DistInfo, timeout_s: float) -> RankFailed:
    """One message for a failed collective, naming the rank that failed and its error when it said so."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    errors = reported_errors(dist)
    if errors:
        culprit = min(errors)
        return RankFailed(
            f"rank {culprit} failed: {errors[culprit]} (rank {dist.rank} stopped with it; its collective said: {first})"
        )
    return RankFailed(
        f"rank {dist.rank}: another process stopped answering (no rank reported an error: killed, "
        f"out of memory, or its machine lost?); the collective failed within dist.timeout_s="
        f"{timeout_s:g} s: {first}"
    )

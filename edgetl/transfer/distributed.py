"""Fine-tuning across processes: `torchrun --nproc-per-node N -m edgetl.cli.host finetune ...`.

torchrun starts N copies of the command with RANK, WORLD_SIZE and LOCAL_RANK set; `session()`
sees them and joins the process group (gloo without CUDA, NCCL with it, one GPU per process:
cuda:LOCAL_RANK). Without them it yields a single-process context whose every collective is a
no-op, so a plain `edgetl finetune` starts no process group and pays nothing.

Who does what (edgetl/transfer/run.py): every rank embeds its share of the images and gets all
of them back in order; rank 0 trains the linear head and broadcasts it; the backbone trains as
DistributedDataParallel, each rank on its share of every batch; rank 0 takes each early-stopping
decision and broadcasts it, so no rank can leave the epoch loop while another waits in a
collective; only rank 0 writes the run and the cache. A rank that fails exits non-zero, and
torchrun then stops the others (a peer's closed connection also ends their collectives).
"""

from __future__ import annotations

import gc
import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from edgetl.errors import EdgetlError

# What torchrun (and other launchers of its kind) set in every process it starts.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_rank() -> int:
    """This process's rank as its launcher set it (0 when not launched by torchrun), readable
    before the process group exists: the CLI uses it to print the result once."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Context:
    """One process's place in the run: its rank, the world size and the device it computes on.

    Every collective below must be called by all ranks in the same order; with world size 1
    each returns its input unchanged.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        """True under torchrun (a process group is joined), even with a world size of 1."""
        return self.backend is not None

    @property
    def rank0(self) -> bool:
        """True on the process that decides and writes (the only one when not distributed)."""
        return self.rank == 0

    def describe(self) -> dict:
        """What metrics.json records: {"world_size": N, "backend": "gloo" | "nccl"}."""
        return {"world_size": self.world_size, "backend": self.backend}

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of range(n); the shares of ranks 0..N-1 in order cover it."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        """Every rank's `rows` concatenated in rank order, on every rank. With `shard`, this puts
        per-image results back in the original order. Shares may be empty or differ in length."""
        if not self.is_distributed:
            return rows
        parts: list = [None] * self.world_size
        tdist.all_gather_object(parts, rows)
        return np.concatenate([p for p in parts if len(p)] or parts[:1])

    def union(self, mask: np.ndarray) -> np.ndarray:
        """Element-wise OR of a boolean mask over all ranks."""
        if not self.is_distributed:
            return mask
        t = torch.from_numpy(mask.astype(np.uint8)).to(self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return t.cpu().numpy().astype(bool)

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over all ranks (float64)."""
        if not self.is_distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (other ranks may pass None). Pickled: for decisions,
        histories and a head's weights, not for bulk data."""
        if not self.is_distributed:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def check_same(self, value, what: str) -> None:
        """Raise on every rank unless `value` (picklable, comparable) is rank 0's: ranks that see
        different data would train on batches of different counts and wait on each other forever."""
        if not self.is_distributed:
            return
        ours = self.broadcast(value)
        differs = self.sum([float(value != ours)])[0]
        if differs:
            raise EdgetlError(f"{int(differs)} of {self.world_size} ranks see a different {what} than rank 0; every "
                              "rank must read the same data (the same folder contents on every node)")

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` as DistributedDataParallel when distributed, else itself. Its weights start
        as rank 0's. Buffers are not re-sent at every forward: they are BatchNorm statistics,
        the same pretrained ones on every rank and frozen in every strategy
        (strategies.set_train_mode)."""
        if not self.is_distributed:
            return model
        ddp = nn.parallel.DistributedDataParallel
        # torch 2.14 renamed the option; the old name warns there.
        no_resync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                     else "broadcast_buffers")
        return ddp(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                   **{no_resync: False})


def _from_environment() -> Context | None:
    if not all(v in os.environ for v in LAUNCH_VARIABLES):
        return None
    rank, world, local = (int(os.environ[v]) for v in LAUNCH_VARIABLES)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise EdgetlError(f"LOCAL_RANK {local} has no GPU: this node has {torch.cuda.device_count()}; pass "
                              "--nproc-per-node at most the number of GPUs")
        return Context(rank, world, local, local_world, "nccl", torch.device("cuda", local))
    return Context(rank, world, local, local_world, "gloo", torch.device("cpu"))


@contextmanager
def session() -> Iterator[Context]:
    """The process group for one fine-tuning run when launched by torchrun, else a
    single-process context. A group the caller already joined is used and left open; one
    joined here is destroyed on the way out, also on an error."""
    ctx = _from_environment()
    if ctx is None:
        yield Context()
        return
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)  # NCCL and the object collectives use the current device
    created = not tdist.is_initialized()
    if created:
        tdist.init_process_group(ctx.backend, rank=ctx.rank, world_size=ctx.world_size)
    else:
        ctx = replace(ctx, backend=str(tdist.get_backend()))
    try:
        yield ctx
    except BaseException:
        if created:  # no barrier: the peers may be stuck in a collective that will never complete
            tdist.destroy_process_group()
        raise
    if created:
        _leave_together()


def _leave_together() -> None:
    """Tear the group down only once every rank is done with it. A rank that destroyed its gloo
    group while a peer still finished the last collective, or while a DDP reducer still held the
    group, died with SIGABRT ("terminate called without an active exception") in one CI run."""
    gc.collect()  # drop DDP reducers (reference cycles) before the group they point at
    tdist.barrier()
    tdist.destroy_process_group()

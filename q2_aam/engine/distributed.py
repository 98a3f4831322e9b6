"""Training on several processes with torch.distributed (torchrun, DistributedDataParallel).

The trainer asks this module which rank it is, how many ranks there are, which part of a
global batch is its own, and how to see every rank's sample vectors. With no process group
(one process) every answer is the trivial one, so the trainer has one code path.

The UniFrac loss needs every pair of the global batch, including pairs whose samples sit
on different ranks: each rank gathers all ranks' sample vectors (gradients flow back to
each rank's own rows) and computes the loss of the whole global batch against that
batch's distance block. Every rank computes the same loss; the gather's backward sums the
ranks' gradients and DDP averages them, which together give exactly the one-process
gradient.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1

    @property
    def main(self):
        """The one rank that writes logs, checkpoints and outputs."""
        return self.rank == 0

    @property
    def distributed(self):
        return self.world > 1


def context():
    """This process's rank and the number of ranks (0 and 1 without a process group)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size())
    return Context()


def shards(rows, world):
    """A global batch's rows dealt to the ranks: rank r gets rows r, r + world, …"""
    rows = np.asarray(rows, dtype=np.int64)
    return [rows[r::world] for r in range(world)]


class _GatherRows(torch.autograd.Function):
    """all_gather of equally shaped (n, D) tensors with a gradient: every rank's loss reads
    every rank's rows, so a rank's rows get the sum of all ranks' gradients for them."""

    @staticmethod
    def forward(ctx, padded):
        import torch.distributed as dist
        parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, padded.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), padded.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_rows(local, sizes):
    """Every rank's (n_r, D) rows -> (sum n_r, D) in rank order, differentiable.

    all_gather needs one shape on every rank, so each rank pads to the largest shard and
    the padding is dropped after; ``sizes`` are the shards' lengths, known to every rank.
    """
    longest = max(sizes)
    padded = torch.cat([local, local.new_zeros(longest - local.shape[0], *local.shape[1:])])
    everyone = _GatherRows.apply(padded)
    return torch.cat([everyone[r * longest:r * longest + n] for r, n in enumerate(sizes)])


def all_ranks_agree(flag):
    """True only if ``flag`` is true on every rank (e.g. a finite loss): ranks must take
    the same optimizer steps, or their weights drift apart."""
    import torch.distributed as dist
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def global_mean(local_mean, n_local, n_global):
    """The mean over the global batch of a per-sample mean each rank computed on its own
    shard (a detached number, for the logs)."""
    import torch.distributed as dist
    value = torch.tensor([float(local_mean) * n_local])
    dist.all_reduce(value)
    return value.item() / n_global


def init_from_environment(backend=None):
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, …);
    each rank takes the GPU of its LOCAL_RANK when there are GPUs. Returns the Context."""
    import torch.distributed as dist
    if 'RANK' not in os.environ or dist.is_initialized():
        return context()
    if backend is None:
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    if backend == 'nccl':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    dist.init_process_group(backend)
    return context()


def wrap(model, device):
    """The model as DistributedDataParallel when there are several ranks, else itself."""
    if not context().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    # find_unused_parameters: a frozen encoder, or a head whose loss is off, leaves
    # parameters without gradients (DDP warns once when a run has none; static_graph failed
    # on pretraining without the masked-base loss)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda'
                                   else None, find_unused_parameters=True)

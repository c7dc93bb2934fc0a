"""Data-parallel training under PyTorch's own launcher (``torchrun``).

``torchrun --standalone --nproc-per-node N $(which seg-perception) train ...`` starts N copies of
the command with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address) in their
environment; :func:`setup` turns that into a process group (NCCL on CUDA, gloo on the CPU), one
GPU per process. Without those variables training runs as one process, exactly as before.

What the trainer builds on top (see :mod:`.trainer`): each rank takes its own block of every global
batch, so N ranks of batch ``b`` see the samples one process of batch ``N*b`` would; the loss is
normalised by the pixel count of the global batch, so the averaged gradients equal that process's;
validation is sharded and its confusion matrices summed (exactly the single-process figure); only
rank 0 writes files.

``--sync-bn`` turns every batch norm into a synchronised one, which normalises by the statistics of
the global batch. PyTorch's ``nn.SyncBatchNorm`` accepts GPU tensors only (and DistributedDataParallel
refuses it in a CPU model); :class:`CpuSyncBatchNorm` does the same on the CPU (gloo) with two
differentiable all-reduces, so the behaviour is tested on machines without a GPU and a CPU run
matches a single process of the global batch.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

#: How long a rank waits for the others in one collective before it gives up. A rank that dies
#: usually fails the others at once (the launcher stops them, or the connection closes); this
#: bounds the rest, e.g. a rank stuck on a dead file system.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class DistributedSetupError(ValueError):
    """The launcher's environment cannot work (e.g. more processes on a machine than GPUs)."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run; ``world_size == 1`` without a launcher."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, plots and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        if not self.enabled:
            return "world size 1 (single process)"
        return f"world size {self.world_size} ({self.backend}, this is rank {self.rank})"

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over all ranks (in place; returned for convenience)."""
        if self.enabled:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def sum_array(self, array: np.ndarray) -> np.ndarray:
        """A numpy array summed over all ranks (exact for integers)."""
        if not self.enabled:
            return array
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        return self.all_reduce_sum(tensor).cpu().numpy()

    def from_main(self, work: Any, *args: Any) -> Any:
        """``work(*args)`` run on rank 0 alone and its result handed to every rank.

        An exception on rank 0 is raised on every rank (same type and message), so bad data fails
        the whole run with one clear error instead of leaving the others waiting.
        """
        if not self.enabled:
            return work(*args)
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = (work(*args), None)
            except Exception as exc:  # handed to every rank, then raised here too
                try:
                    pickle.dumps(exc)
                except Exception:  # an error that cannot travel still says what it was
                    exc = RuntimeError(f"{type(exc).__name__}: {exc}")
                box[0] = (None, exc)
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
        if error is not None:
            raise error
        return result

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics), so all ranks hold the
        model rank 0 saves; parameters are already equal under DistributedDataParallel."""
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def launched() -> bool:
    """True when started by torchrun (or any launcher that sets ``WORLD_SIZE`` above 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def setup(device: torch.device) -> Distributed:
    """Join the launcher's process group, if there is one; ``device`` is the single-process device
    (``cuda`` becomes ``cuda:LOCAL_RANK``)."""
    if not launched():
        return Distributed(device=device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(
                f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                f"start at most that many processes per machine (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return Distributed(rank, world_size, local_rank, backend, device)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients: every rank's loss depends
    on the global statistics, so each input's gradient collects all of them."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class CpuSyncBatchNorm(_BatchNorm):
    """A synchronised batch norm for CPU tensors (gloo); ``nn.SyncBatchNorm`` takes GPU tensors
    only, and DistributedDataParallel refuses it in a CPU model.

    Training under a process group normalises by the mean and biased variance of the whole global
    batch (two passes, as ``BatchNorm`` computes them, so the result matches one process of the
    global batch to float rounding) and updates the running statistics with the unbiased variance
    over the global count. Evaluation and single-process runs are a plain batch norm.
    """

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or dist.group.WORLD
        if not self.training or not dist.is_initialized() or dist.get_world_size(group) < 2:
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        # Statistics in float64, as PyTorch's CPU batch norm accumulates them: a near-constant
        # channel's variance is otherwise summation noise, amplified by 1/sqrt(eps).
        x = input.double()
        local = torch.tensor([input.numel() // channels], dtype=x.dtype)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), local]), group)
        count = totals[channels].detach()
        mean = totals[:channels] / count
        centred = x - mean.reshape(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / count
        out = (centred * torch.rsqrt(var + self.eps).reshape(shape)).to(input.dtype)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = var * (count / max(float(count) - 1.0, 1.0))
                self.running_mean.mul_(1.0 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(unbiased.detach().to(self.running_var.dtype), alpha=factor)
        return out


def _cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every batch norm replaced by a :class:`CpuSyncBatchNorm` holding the same
    parameters and buffers (as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does for GPUs)."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _cpu_sync_batchnorm(child))
    return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every batch norm of ``model`` as a synchronised one: ``nn.SyncBatchNorm`` on GPUs,
    :class:`CpuSyncBatchNorm` on the CPU. Same parameters and buffers, same state-dict keys, so
    checkpoints load into the plain model."""
    if device.type == "cpu":
        return _cpu_sync_batchnorm(model)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def count_sync_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.SyncBatchNorm, CpuSyncBatchNorm)) for m in model.modules())

"""Process-group set-up for ``torchrun`` (DDP: gloo on CPU, nccl on CUDA) and the run's own collectives.

Every collective deitlab issues itself (stop flag, non-finite flag, evaluation counts, RNG states) goes through
the helpers here, and they put their tensors on :func:`collective_device`: the GPU for NCCL, which rejects CPU
tensors, the CPU for gloo. That is the one rule; tests/test_distributed.py checks that no other module calls a
collective. We keep a single backend (rather than the ``cpu:gloo,cuda:nccl`` pair) because the tensors involved
are tiny and one backend means one transport to configure on a cluster.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def backend_for(device_type: str) -> str:
    """The process-group backend for a run on ``device_type``: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device_type == "cuda" else "gloo"


def device_for_backend(backend: str, cuda_index: int) -> torch.device:
    """Where a collective's tensors must live: the process's GPU when the backend includes NCCL, else the CPU."""
    return torch.device("cuda", cuda_index) if "nccl" in backend.lower() else torch.device("cpu")


def collective_device() -> torch.device:
    """:func:`device_for_backend` of the live default process group (the CPU when there is none)."""
    if not is_grouped():
        return torch.device("cpu")
    backend = str(dist.get_backend())
    return device_for_backend(backend, torch.cuda.current_device() if "nccl" in backend.lower() else 0)


def is_grouped() -> bool:
    """Whether a default process group exists (a plain run has none: its collectives are no-ops)."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend_for(device_type)
        if device_type == "cuda":
            torch.cuda.set_device(local)
            # Binding the group to the device lets NCCL set up eagerly and makes barrier() use the right GPU.
            dist.init_process_group(backend=backend, device_id=torch.device("cuda", local))
        else:
            dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local)


def barrier(info: DistInfo) -> None:
    """Wait for every process (``info`` is kept for the callers; the live group decides)."""
    if is_grouped():
        dist.barrier()


def all_reduce_tensor(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``values`` summed (``op="sum"``) or maximised (``"max"``) over the processes, reduced on the backend's
    device and returned on ``values``' device; ``values`` itself is returned when there is no process group."""
    if not is_grouped():
        return values
    buf = values.to(collective_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return buf.to(values.device)


def all_gather_tensor(values: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``values`` (same shape and dtype on all), in rank order, on ``values``' device."""
    if not is_grouped():
        return [values]
    buf = values.to(collective_device())
    out = [torch.empty_like(buf) for _ in range(dist.get_world_size())]
    dist.all_gather(out, buf)
    return [t.to(values.device) for t in out]


def broadcast_flag(flag: bool | torch.Tensor, info: DistInfo) -> bool:
    """True on every rank if any rank says True (stop requests, non-finite steps). ``flag`` may be a 0-d bool
    tensor on the compute device (the non-finite check): then the only host sync is the answer itself."""
    if not is_grouped():
        return bool(flag)
    t = torch.as_tensor(flag).reshape(1).to(torch.float32)
    return bool(all_reduce_tensor(t, op="max").item() > 0)


def sum_across(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (the values themselves in a plain run)."""
    if not (info.enabled and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def cleanup(info: DistInfo, *, finished: bool = True) -> None:
    """Leave the process group. After a finished run every rank first waits at a barrier, so that no rank tears
    its connections down while a peer still talks to it (CI once saw gloo abort the late rank's process at exit)."""
    if not (info.enabled and dist.is_initialized()):
        return
    gc.collect()  # release the run's DDP reducer (it holds the group) now, not during interpreter shutdown
    if finished:
        try:
            dist.barrier()
        except RuntimeError as err:  # a peer already gone: nothing left to wait for
            log.debug("barrier before leaving the process group failed: %s", err)
    dist.destroy_process_group()

"""torchrun's process group for the teacher's commands (`teacher train`, `extract`, `bank`) and `distill fit`:
one rank per process when RANK is set (NCCL on GPU, gloo on CPU), else one process on the asked device."""
from __future__ import annotations

import os

import torch

from teacher.device import default_device


def dist_setup(device_arg: str | None) -> tuple[int, int, torch.device]:
    """(rank, world, device): torchrun's process group when RANK is set (NCCL on GPU, gloo on CPU), as
    `teacher train` does; else one process on ``device_arg`` (default: cuda if available)."""
    if int(os.environ.get("RANK", -1)) == -1:
        return 0, 1, torch.device(default_device(device_arg))
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and (device_arg is None or device_arg.startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def dist_teardown(world: int) -> None:
    if int(os.environ.get("RANK", -1)) != -1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

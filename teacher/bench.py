"""Feature-extraction latency (VAE encode + implicit caption + one U-Net pass at t=50) and peak memory per image
at one size, on this machine (`teacher bench`, teacher/commands/bench.py: 1 warm-up + --runs timed runs).

    teacher bench --preset sd15 --json --sizes 256 512        (random init is fine for timing)
    teacher bench --preset tiny --checkpoint CKPT --json

Peak memory: torch.cuda.max_memory_allocated on a GPU; on the CPU the process's peak resident set
(VmHWM in /proc/self/status, reset through /proc/self/clear_refs where the kernel allows) above the
resident set before the runs. The paper's figures (Table 10: 0.35 s, 18.7 GB per image on an A100)
are for its full pipeline at its resolution; compare like with like.
"""
from __future__ import annotations

import time

import torch


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def bench_size(model, size: int, batch: int, runs: int, noise_draws: int) -> dict:
    from teacher.model import TeacherModel

    model.feature_spec = model.preset_config.feature_spec(size)  # a random-init teacher runs at any size
    dev = model.device
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    cuda = dev.type == "cuda"
    TeacherModel.extract_features(model, x, noise_draws=noise_draws)  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset = _reset_cpu_peak()
        base = (_status_kb("VmRSS") or 0) * 1024
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.extract_features(x, noise_draws=noise_draws)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak, how = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
        peak_delta = peak - base
    else:
        peak = (_status_kb("VmHWM") or 0) * 1024
        peak_delta = max(0, peak - base)
        how = ("VmHWM - VmRSS before (reset via clear_refs)" if reset
               else "VmHWM (not resettable: includes earlier peaks)")
    return {"size": size, "batch": batch, "runs": runs, "latency_s_per_image": min(times) / batch,
            "latency_s_mean_per_image": sum(times) / len(times) / batch, "peak_bytes": int(peak),
            "peak_bytes_per_image": int((peak if cuda else peak_delta) / batch), "memory_measure": how}

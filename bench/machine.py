"""What a benchmark ran on. Every figure in docs/ names its machine, because a ratio holds only
for the kind of machine it was measured on: the SIMD flags decide which kernels XLA and the
peers' libraries use (AVX2, AVX-512, bfloat16 dot products, AMX tiles), and the load says
whether anything else was running."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The flags that change which kernels run, in the order a reader compares machines by.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def _cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo's text."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _mem_total_gib(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:  # not Linux: the fields are left empty, the benchmark still runs
        return ""


def describe() -> dict:
    """The machine now, as a JSON-able dict for a benchmark's results."""
    model, flags = _cpuinfo(_read("/proc/cpuinfo"))
    cores = os.cpu_count()
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": cores,
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores,
        "flags": [f for f in KERNEL_FLAGS if f in flags],
        "mem_total_gib": _mem_total_gib(_read("/proc/meminfo")),
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def summary(info: dict) -> str:
    """One line for a report: '2 cores of Intel Xeon (avx2, avx512f, ...), 23.4 GiB, Python 3.11.7'."""
    flags = ", ".join(info["flags"]) or "no AVX2"
    memory = f", {info['mem_total_gib']} GiB" if info.get("mem_total_gib") else ""
    return f"{info['cores_usable']} cores of {info['cpu']} ({flags}){memory}, Python {info['python']}"


if __name__ == "__main__":  # bench/gpu.sh records the host beside the GPU
    print(summary(describe()))

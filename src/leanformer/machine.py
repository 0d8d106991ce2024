"""The machine a measurement ran on: the processor's low-precision instructions (``cpu_flags``)
and a one-line description for provenance records and cost tables (``machine_info``)."""
import os
import platform
from pathlib import Path

import torch


def cpu_flags() -> list[str]:
    """The instruction-set extensions that decide low-precision speed on this CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [f for f in wanted if f in flags]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def machine_info() -> str:
    """A one-line description of the machine, for provenance and benchmark tables."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}{' (' + ', '.join(flags) + ')' if flags else ''}, {os.cpu_count()} cores, "
            f"{_plural(torch.get_num_threads(), 'torch thread')}{gpu}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")

"""Where a speed figure was measured: the device, the software versions and the CPU threads, as one JSON-ready dict.

A number without its hardware and versions cannot be compared with anything (detectron2 #106, mmdet #7306), so
every speed record carries this block.
"""
from __future__ import annotations

import os
import platform
import socket

import torch


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 7763 ..."); platform.processor() is often empty or just the ISA on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def environment(device: str | torch.device = "cpu") -> dict:
    """Device name, torch / torchvision / CUDA / cuDNN versions, CPU threads, platform and host of this process.

    `cuda` and `cudnn` are the versions torch was built with and loads (None when the build has none); the GPU's
    name, memory and compute capability are filled in for a CUDA device.
    """
    import torchvision

    device = torch.device(device)
    record = {
        "device": str(device),
        "device_name": cpu_name(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_name": cpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        record.update(
            device_name=properties.name,
            gpu_memory_mb=round(properties.total_memory / 2**20),
            gpu_capability=f"{properties.major}.{properties.minor}",
            gpu_count=torch.cuda.device_count(),
        )
    return record

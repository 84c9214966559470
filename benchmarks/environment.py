"""Where a speed figure was measured: the device, the software versions and the CPU threads, as one JSON-ready dict.

A number without its hardware and versions cannot be compared with anything (detectron2 #106, mmdet #7306), so
every speed record carries this block, with the math settings in force: on Ampere and later GPUs cuDNN runs
"fp32" convolutions in TF32 by default (`cudnn_allow_tf32`) while matmuls stay in true fp32 unless
`float32_matmul_precision` is "high", so a "32" figure means different arithmetic on different cards and settings.
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


def math_settings() -> dict:
    """The process-wide settings that change what a "32" run computes and how convolutions are chosen."""
    return {
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
    }


def restore_math_settings(settings: dict) -> None:
    """Put back what `math_settings()` returned (float32_matmul_precision also sets cuda_matmul_allow_tf32)."""
    torch.backends.cudnn.allow_tf32 = settings["cudnn_allow_tf32"]
    torch.set_float32_matmul_precision(settings["float32_matmul_precision"])
    torch.backends.cuda.matmul.allow_tf32 = settings["cuda_matmul_allow_tf32"]
    torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = settings["cudnn_deterministic"]


def environment(device: str | torch.device = "cpu") -> dict:
    """Device name, torch / torchvision / CUDA / cuDNN versions, CPU threads, platform and host of this process,
    and the math settings in force now (`math_settings`).

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
        **math_settings(),
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

"""What this machine has: capacity from psutil, GPUs from NVML / nvidia-smi, usage samples."""

import logging
import os
import shutil
import subprocess
from pathlib import Path

import psutil

from .resources import MILLICORES_PER_CORE, Resources

logger = logging.getLogger(__name__)


def detect_capacity(*, storage_path: Path) -> Resources:
    return Resources(
        cpu=(psutil.cpu_count(logical=True) or 1) * MILLICORES_PER_CORE,
        gpu=len(detect_gpus()),
        memory=psutil.virtual_memory().total,
        storage=psutil.disk_usage(str(storage_path)).total,
    )


def detect_gpus() -> list[dict]:
    """GPUs as [{"index", "name", "memory_bytes", "uuid"}]: NVML first, nvidia-smi second, else none."""
    try:
        import pynvml  # optional: present where the NVIDIA driver's Python bindings are installed

        pynvml.nvmlInit()
        try:
            return [_nvml_gpu(pynvml, index) for index in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no bindings, no driver: fall through to the CLI
        pass
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        output = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total,uuid", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("nvidia-smi failed: %s", error)
        return []
    gpus = []
    for line in output.strip().splitlines():
        index, name, memory_mib, uuid = (part.strip() for part in line.split(","))
        gpus.append({"index": int(index), "name": name, "memory_bytes": int(float(memory_mib)) * 2**20, "uuid": uuid})
    return gpus


def _nvml_gpu(pynvml, index: int) -> dict:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    return {
        "index": index,
        "name": name.decode() if isinstance(name, bytes) else name,
        "memory_bytes": pynvml.nvmlDeviceGetMemoryInfo(handle).total,
        "uuid": str(pynvml.nvmlDeviceGetUUID(handle)),
    }


def sample_usage(*, storage_path: Path) -> dict:
    """One heartbeat's measurements of the whole machine."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(storage_path))
    load1, load5, load15 = os.getloadavg()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(logical=True) or 1,
        "memory_used_bytes": memory.total - memory.available,
        "memory_total_bytes": memory.total,
        "disk_used_bytes": disk.used,
        "disk_total_bytes": disk.total,
        "load": [round(load1, 2), round(load5, 2), round(load15, 2)],
    }

"""Memory readings: RSS of this process tree (data workers included) and GPU memory."""

from __future__ import annotations

import psutil
import torch


def process_tree_rss_bytes() -> int:
    """Resident memory of this process and all its children (data-loader workers)."""
    proc = psutil.Process()
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def gpu_memory_bytes(device: torch.device) -> dict[str, int]:
    """Allocated, peak allocated and reserved memory of a CUDA device (empty dict otherwise)."""
    if device.type != "cuda":
        return {}
    return {
        "allocated": torch.cuda.memory_allocated(device),
        "peak_allocated": torch.cuda.max_memory_allocated(device),
        "reserved": torch.cuda.memory_reserved(device),
    }

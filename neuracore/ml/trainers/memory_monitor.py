"""Watches GPU memory and the host RSS of the run's process tree; stops cleanly before an OOM."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil
import torch
from accelerate import Accelerator

from neuracore.ml.core.errors import NeuracoreError
from neuracore.ml.utils.memory import process_tree_rss_bytes

logger = logging.getLogger(__name__)

ADVICE = "use a smaller batch_size, fewer num_workers or gradient checkpointing"


class MemoryLimitExceeded(NeuracoreError):
    """The run stopped (after saving a checkpoint where possible) because memory ran out."""

    exit_code = 3


@dataclass
class MemoryReading:
    """Fractions of the limits in use at one check."""

    host_fraction: float
    gpu_fraction: float | None
    host_bytes: int
    gpu_bytes: int | None


class MemoryMonitor:
    """Every `check_interval` steps: read memory, log it, warn once when close, report a breach."""

    def __init__(self, accelerator: Accelerator, enabled: bool, check_interval: int, gpu_fraction: float,
                 host_fraction: float) -> None:
        self.accelerator = accelerator
        self.enabled = enabled
        self.check_interval = check_interval
        self.gpu_limit = gpu_fraction
        self.host_limit = host_fraction
        self.host_total = psutil.virtual_memory().total
        self.warned = False

    def read(self) -> MemoryReading:
        """Current host RSS (process tree) and device memory in use, as fractions of the totals."""
        host = process_tree_rss_bytes()
        gpu_bytes = gpu_fraction = None
        device = self.accelerator.device
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            gpu_bytes = max(total - free, torch.cuda.max_memory_reserved(device))
            gpu_fraction = gpu_bytes / total
        return MemoryReading(host / self.host_total, gpu_fraction, host, gpu_bytes)

    def check(self, step: int) -> str | None:
        """None if fine; otherwise the message of the limit crossed (agreed across ranks)."""
        if not self.enabled or step % self.check_interval:
            return None
        reading = self.read()
        values = {"memory/host_fraction": reading.host_fraction}
        if reading.gpu_fraction is not None:
            values["memory/gpu_fraction"] = reading.gpu_fraction
        self.accelerator.log(values, step=step)
        breach = ""
        if reading.host_fraction > self.host_limit:
            breach = (f"host RAM of the run's processes reached {reading.host_bytes / 2**30:.1f} GiB "
                      f"({reading.host_fraction:.0%} of {self.host_total / 2**30:.1f} GiB), above "
                      f"memory_monitor.host_fraction={self.host_limit}")
        elif reading.gpu_fraction is not None and reading.gpu_fraction > self.gpu_limit:
            breach = (f"GPU memory reached {reading.gpu_fraction:.0%} of the device, above "
                      f"memory_monitor.gpu_fraction={self.gpu_limit}")
        elif not self.warned and (reading.host_fraction > 0.9 * self.host_limit or
                                  (reading.gpu_fraction or 0.0) > 0.9 * self.gpu_limit):
            self.warned = True
            logger.warning("memory is close to its limit at step %d (host %.0f%%, GPU %s); %s",
                           step, 100 * reading.host_fraction,
                           "n/a" if reading.gpu_fraction is None else f"{100 * reading.gpu_fraction:.0f}%", ADVICE)
        flag = torch.tensor([1.0 if breach else 0.0], device=self.accelerator.device)
        if float(self.accelerator.reduce(flag, reduction="sum")) > 0 and not breach:
            breach = "another rank crossed its memory limit"
        return breach or None

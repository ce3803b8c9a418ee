"""Random-number-generator state of one process as safetensors + JSON metadata (never pickled).

accelerate stores RNG states with `torch.save` (`random_states_<rank>.pkl`) and, on resume, loads them
inside a broad `except` that only logs at info level, so a damaged file silently changes the run.
Checkpoints hold `rng_state_<rank>.safetensors` instead: the torch CPU generator and every CUDA
generator as uint8 tensors, NumPy's MT19937 key as a tensor, Python's `random` state, the rest of
NumPy's and accelerate's micro-step counter as JSON metadata. Restoring is strict: anything missing
or malformed raises `ValueError` naming what.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "neuracore-rng-1"


def rng_file(folder: Path, process_index: int) -> Path:
    """`<folder>/rng_state_<rank>.safetensors`."""
    return Path(folder) / f"rng_state_{process_index}.safetensors"


def save_rng_state(folder: Path, process_index: int, micro_step: int) -> Path:
    """Write this process's generators (and accelerate's micro-step counter) to `rng_file`."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state().contiguous(),
               "numpy_key": torch.from_numpy(np.asarray(np_key, dtype=np.int64))}
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for i, state in enumerate(cuda):
        tensors[f"cuda_{i}"] = state.contiguous()
    meta = {
        "format": FORMAT,
        "python": json.dumps([py_version, list(py_state), py_gauss]),
        "numpy": json.dumps([np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)]),
        "cuda_devices": str(len(cuda)),
        "micro_step": str(int(micro_step)),
    }
    path = rng_file(folder, process_index)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_rng_state(path: Path) -> int:
    """Restore the generators saved by `save_rng_state`; returns the micro-step counter. ValueError on any defect."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta: dict[str, Any] = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except Exception as exc:  # noqa: BLE001 - unreadable or corrupt file
        raise ValueError(f"{path.name}: unreadable RNG state ({type(exc).__name__})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path.name}: not a neuracore RNG state (format {meta.get('format')!r})")
    try:
        py_version, py_state, py_gauss = json.loads(meta["python"])
        np_kind, np_pos, np_has_gauss, np_gauss = json.loads(meta["numpy"])
        cuda_devices, micro_step = int(meta["cuda_devices"]), int(meta["micro_step"])
        cpu, key = tensors["torch_cpu"], tensors["numpy_key"]
        cuda = [tensors[f"cuda_{i}"] for i in range(cuda_devices)]
        if cpu.dtype != torch.uint8 or key.shape != (624,):
            raise ValueError("wrong tensor types")
        python_state = (int(py_version), tuple(int(v) for v in py_state), py_gauss)
        numpy_state = (str(np_kind), key.numpy().astype(np.uint32), int(np_pos), int(np_has_gauss), float(np_gauss))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: malformed RNG state ({exc})") from None
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and len(cuda) != available:
        raise ValueError(f"{path.name}: saved with {len(cuda)} CUDA devices, this process sees {available}")
    try:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path.name}: RNG state does not fit this process ({exc})") from None
    return micro_step

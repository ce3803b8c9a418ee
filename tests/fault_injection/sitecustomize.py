"""Fault injection for the tests' child processes; production code reads no such switch.

The tests put this folder first on PYTHONPATH (`tests.conftest.fault_env`), so Python imports it at
start-up in every process of a run (each `accelerate launch` rank included) and it patches the
trainer before `neuracore.ml.train` imports it:

- `NEURACORE_TEST_KILL_AFTER_STEP=N`: the process SIGKILLs itself once optimizer step N is complete
  (its checkpoint, if one is due, written): at the first memory-monitor check of step N + 1.
- `NEURACORE_TEST_OOM_ABOVE=RANK:SIZE`: on that rank, batch-size probes above SIZE samples fail as if
  out of memory (the autotuner's `simulated_limit`).
- `NEURACORE_TEST_RECORD_SAMPLES=DIR`: every window read (`WindowDataset.__getitem__`, num_workers=0)
  is appended as `<dataset length> <index>` to `DIR/samples-<rank>.txt` (which samples a run saw).
"""

import os
import signal

_KILL_AFTER = os.environ.get("NEURACORE_TEST_KILL_AFTER_STEP")
_OOM_ABOVE = os.environ.get("NEURACORE_TEST_OOM_ABOVE")
_RECORD = os.environ.get("NEURACORE_TEST_RECORD_SAMPLES")


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


if _KILL_AFTER:
    from neuracore.ml.trainers import memory_monitor

    _check = memory_monitor.MemoryMonitor.check

    def _check_then_maybe_die(self, step):  # type: ignore[no-untyped-def]
        if step > int(_KILL_AFTER):
            os.kill(os.getpid(), signal.SIGKILL)
        return _check(self, step)

    memory_monitor.MemoryMonitor.check = _check_then_maybe_die

if _OOM_ABOVE:
    import functools

    from neuracore.ml.trainers import autotune

    _target, _, _size = _OOM_ABOVE.partition(":")
    _tune = autotune.autotune_batch_size

    @functools.wraps(_tune)
    def _tune_with_limit(*args, **kwargs):  # type: ignore[no-untyped-def]
        if _rank() == int(_target):
            kwargs["simulated_limit"] = int(_size)
        return _tune(*args, **kwargs)

    autotune.autotune_batch_size = _tune_with_limit

if _RECORD:
    from neuracore.ml.datasets import windows

    _getitem = windows.WindowDataset.__getitem__

    def _recorded_getitem(self, index):  # type: ignore[no-untyped-def]
        with open(os.path.join(_RECORD, f"samples-{_rank()}.txt"), "a") as f:
            f.write(f"{len(self)} {int(index)}\n")
        return _getitem(self, index)

    windows.WindowDataset.__getitem__ = _recorded_getitem

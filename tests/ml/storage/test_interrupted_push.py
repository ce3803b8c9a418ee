"""A pusher killed mid-upload (SIGKILL after its first blob) leaves the repository as it was."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
from pathlib import Path

from storage_helpers import export_tiny

from neuracore.ml.storage import Hub, push_model

# argv: folder, storage URL, and optionally N: SIGKILL the pusher after its N-th blob upload (a test-only
# hook on the Hub object; production code reads no fault-injection switch from the environment).
PUSH = """import os, signal, sys
from neuracore.ml.storage import Hub, push_model
hub = Hub(sys.argv[2])
if len(sys.argv) > 3:
    hub._after_blob = lambda n: os.kill(os.getpid(), signal.SIGKILL) if n >= int(sys.argv[3]) else None
push_model(sys.argv[1], 'acme/arm', hub=hub)
"""


def test_killed_push_leaves_old_revision(storage_url: str, tmp_path: Path) -> None:
    old = push_model(export_tiny(tmp_path / "old", seed=1), "acme/arm", message="old", storage_url=storage_url)
    new = export_tiny(tmp_path / "new", seed=2)
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", PUSH, str(new), storage_url, "1"], check=False, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    hub = Hub(storage_url)
    log = hub.log("acme/arm")
    assert [e.revision for e in log] == [old.revision]
    pulled = hub.pull("acme/arm")
    assert filecmp.cmp(pulled / "model.safetensors", tmp_path / "old" / "model.safetensors", shallow=False)
    blobs = [n for d in hub.store.list_names("repos/acme/arm/blobs") for n in hub.store.list_names(f"repos/acme/arm/blobs/{d}")]
    assert len(blobs) == 4  # the old revision's 3 files + the one blob the killed push uploaded (unreferenced)

    proc = subprocess.run([sys.executable, "-c", PUSH, str(new), storage_url], check=False, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = hub.log("acme/arm")
    assert len(log) == 2 and log[0].parent == old.revision
    assert filecmp.cmp(hub.pull("acme/arm") / "model.safetensors", new / "model.safetensors", shallow=False)

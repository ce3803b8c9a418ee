"""Training, datasets and export of robot-learning policies.

Import what you need from the sub-packages (`neuracore.ml.datasets`, `neuracore.ml.export`,
...); `Policy` is re-exported lazily so `import neuracore.ml` stays cheap.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "Policy":
        from neuracore.ml.export.policy import Policy

        return Policy
    raise AttributeError(name)

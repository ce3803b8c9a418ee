"""Launchable training entry: `accelerate launch recipes/train.py algorithm=<name> dataset_name=<name> ...`.

Identical to `python -m neuracore.ml.train ...` (same main, same overrides).
"""

from neuracore.ml.train import main

if __name__ == "__main__":
    main()

"""Built-in algorithms: every sub-package is imported here, which registers it."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.ispkg and _module.name != "common":
        importlib.import_module(f"{__name__}.{_module.name}")

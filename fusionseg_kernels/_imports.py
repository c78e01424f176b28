"""Running code when a module is imported by someone else, without importing it ourselves.

The op marks its backend choice for torch.compile (which needs torch._dynamo, 1.2 s) and registers
its FLOP formulas with torch's FLOP counter (which imports triton, 0.13 s). An eager process, like
every ``fusionseg predict``, uses neither; so both are done the moment those modules are imported
(by torch.compile or FlopCounterMode, before they are used), or at once when they already are.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Callable


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback` once the module `name` has been executed, whoever imports it."""

    def __init__(self, name: str, callback: Callable[[], None]):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        original, callback = spec.loader, self.callback

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return original.create_module(spec)

            def exec_module(self, module):
                original.exec_module(module)
                callback()

        spec.loader = _Loader()
        return spec


def when_imported(name: str, callback: Callable[[], None]) -> None:
    """Runs `callback` now if the module `name` is imported already, else right after its import."""
    if name in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))


def lazy_exports(package: str, namespace: dict, table: dict[str, str]):
    """(__getattr__, __dir__) for a package whose public names are imported on first use (PEP 562):
    `table` maps each name to the module (relative to `package`) that defines it; a name once
    imported is kept in `namespace` (the package's globals)."""
    import importlib

    def __getattr__(name: str):
        if name in table:
            value = getattr(importlib.import_module(table[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__

"""Lazy package attributes: ``import probes`` (or a subpackage) loads nothing heavy until a
name is used (PEP 562 module ``__getattr__``)."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping

#: An export that is the subpackage of that name (``probes.finetune``, callable).
SUBMODULE = "<submodule>"


def make_callable(module_name: str, function: Callable[..., object]) -> None:
    """Make module ``module_name`` callable as ``function``: ``probes.finetune(...)`` and
    ``probes.report(...)`` are public functions that share their names with the packages
    implementing them (a module's ``__class__`` may be a ``ModuleType`` subclass)."""
    module = sys.modules[module_name]

    class CallableModule(types.ModuleType):
        def __call__(self, *args: object, **kwargs: object) -> object:
            return function(*args, **kwargs)

    module.__class__ = CallableModule


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` exposing ``exports`` (name -> module,
    absolute or relative to ``package``; :data:`SUBMODULE` for the subpackage of that name
    itself), each imported on first use and then cached."""

    def __getattr__(name: str) -> object:
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        if module == SUBMODULE:
            value = importlib.import_module(f"{package}.{name}")
        else:
            value = getattr(importlib.import_module(module, package), name)
        importlib.import_module(package).__dict__[name] = value  # next access: no __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__

"""A package that is also a function. ``gkt.transfer`` is the package of transfer methods and, called,
``gkt transfer``'s Python call: once any ``gkt.transfer.x`` module is imported, Python sets the attribute
``gkt.transfer`` to the package, so the package itself must be callable. Its call imports the function by
name on first use (the function sits in a higher layer than the package)."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any


class CallableModule(types.ModuleType):
    """A module whose call is the function named by its ``__call_target__`` (``"package.module:function"``)."""

    __call_target__: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__call_function__()(*args, **kwargs)

    def __call_function__(self) -> Callable[..., Any]:
        module, _, name = self.__call_target__.partition(":")
        return getattr(importlib.import_module(module), name)


def make_callable(module_name: str, target: str) -> None:
    """Make the imported module ``module_name`` callable as ``target`` (``"package.module:function"``,
    imported at call time); its other attributes and submodules stay as they are."""
    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.__call_target__ = target  # type: ignore[attr-defined]

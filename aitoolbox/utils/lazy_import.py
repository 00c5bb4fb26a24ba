"""Lazy package attributes (PEP 562): a name's module is imported when the name is first used.

Packages list their public names in ``__all__`` and map each to the module defining it, so that
``import aitoolbox`` stays light while ``from aitoolbox import TrainLoop`` and
``from aitoolbox import *`` work as in the original aitoolbox.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple


def exports(module_by_names: Mapping[str, Sequence[str]]) -> Dict[str, str]:
    """``{module: [name, ...]}`` flattened to ``{name: module}``."""
    return {name: module for module, names in module_by_names.items() for name in names}


def lazy_module_attributes(package_globals: Dict[str, Any], names: Mapping[str, str]
                           ) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """A module ``__getattr__`` and ``__dir__`` resolving ``names`` on first access.

    Args:
        package_globals: the package's ``globals()``; a resolved name is cached there.
        names: public name -> dotted path of the module that defines it.

    Returns:
        ``(__getattr__, __dir__)`` to assign at module level.
    """
    package = package_globals["__name__"]

    def __getattr__(name: str) -> Any:
        module_name = names.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        package_globals[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(package_globals) | set(names))

    return __getattr__, __dir__

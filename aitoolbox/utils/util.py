"""Small function and list helpers (the original aitoolbox's ``aitoolbox.utils.util``)."""
from __future__ import annotations

import functools
import types
from typing import Any, Callable, List, Optional


def function_exists(object_to_check: Any, fn_name: str) -> bool:
    """Whether ``object_to_check`` has a callable attribute ``fn_name``.

    Args:
        object_to_check: the object searched.
        fn_name: name of the function.

    Returns:
        True when the attribute exists and is callable.
    """
    return callable(getattr(object_to_check, fn_name, None))


def copy_function(fn: Callable) -> types.FunctionType:
    """A new function object with ``fn``'s code, globals, defaults, closure and metadata.

    A bound method is copied as its underlying function (the copy takes ``self`` explicitly), so
    that it can be attached to, and called with, another object.

    Args:
        fn: the function (or bound method) to copy.

    Returns:
        The copy.
    """
    function = getattr(fn, "__func__", fn)
    copy = types.FunctionType(function.__code__, function.__globals__, name=function.__name__,
                              argdefs=function.__defaults__, closure=function.__closure__)
    copy = functools.update_wrapper(copy, function)
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy


def _pass_only(): pass  # noqa: E704


def _docstring_pass():
    """Docstring."""


_EMPTY_BODIES = (_pass_only.__code__.co_code, _docstring_pass.__code__.co_code, (lambda: None).__code__.co_code)


def is_empty_function(fn: Callable) -> bool:
    """Whether ``fn``'s body does nothing (``pass``, a docstring only, or ``lambda: None``).

    Args:
        fn: a function or bound method.

    Returns:
        True for an empty function.
    """
    code = getattr(fn, "__func__", fn).__code__
    doc = getattr(fn, "__doc__", None)
    constants = tuple(c for c in code.co_consts if c is not None and c != doc)
    return code.co_code in _EMPTY_BODIES and not constants


def flatten_list_of_lists(nested_list: Optional[List[list]]) -> Optional[list]:
    """One level of nesting removed: ``[[1, 2], [3]] -> [1, 2, 3]``; None stays None."""
    if nested_list is None:
        return None
    return [item for sublist in nested_list for item in sublist]

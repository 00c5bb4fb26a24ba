"""DataParallel and DistributedDataParallel wrappers that keep the ``TTModel`` contract.

``TTDataParallel`` / ``TTDistributedDataParallel`` expose the wrapped model's ``get_loss``,
``get_loss_eval`` and ``get_predictions``. Inside them ``self`` is a :class:`ModuleView`: calling
``self(...)`` runs the *wrapper* (so that DataParallel scatters the batch and DDP synchronises the
gradients), while ``self.<attribute>`` finds the user's own attributes and methods.
"""
from __future__ import annotations

import inspect
import types
from typing import Any, Sequence

from torch import nn
from torch.nn.parallel import DistributedDataParallel


class ModuleView:
    """What ``self`` is inside a wrapped model's ``get_loss`` / ``get_predictions``.

    * ``view(...)`` calls the wrapper (DataParallel / DDP forward).
    * Methods defined by the user's classes (not torch's) are bound to the view, so that
      ``self.helper(...)`` calling ``self(...)`` also goes through the wrapper.
    * Any other attribute is read from (and written to) the user's module; an attribute it lacks
      is read from the wrapper (e.g. ``self.module``).

    Args:
        wrapper: the DataParallel / DistributedDataParallel module.
        module: the user's module inside it.
    """

    __slots__ = ("_wrapper", "_module")

    def __init__(self, wrapper: nn.Module, module: nn.Module):
        object.__setattr__(self, "_wrapper", wrapper)
        object.__setattr__(self, "_module", module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return object.__getattribute__(self, "_wrapper")(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        module = object.__getattribute__(self, "_module")
        function = _user_function(type(module), name)
        if function is not None:
            return types.MethodType(function, self)
        try:
            return getattr(module, name)
        except AttributeError:
            pass
        wrapper = object.__getattribute__(self, "_wrapper")
        try:
            return getattr(wrapper, name)
        except AttributeError:
            raise AttributeError(f"{type(module).__name__!r} object (wrapped in {type(wrapper).__name__}) "
                                 f"has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_module"), name, value)

    def __reduce__(self):
        return ModuleView, (object.__getattribute__(self, "_wrapper"), object.__getattribute__(self, "_module"))

    def __repr__(self) -> str:
        return f"ModuleView({object.__getattribute__(self, '_module')!r})"


def _user_function(cls: type, name: str):
    """The plain function ``name`` of ``cls`` when a non-torch class in its MRO defines it."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            value = klass.__dict__[name]
            from_torch = (klass.__module__ or "").startswith("torch.")
            return value if inspect.isfunction(value) and not from_torch else None
    return None


_DEFAULT_MODEL_METHODS = ("get_loss", "get_loss_eval", "get_predictions")


class TTParallelBase:
    """The ``TTModel`` contract on a parallel wrapper: the wrapped model's methods and attributes.

    ``get_loss`` / ``get_loss_eval`` / ``get_predictions`` run the wrapped model's own methods with
    ``self`` a :class:`ModuleView`, so that ``self(...)`` inside them runs the wrapper. Any other
    method the user's model class defines (``wrapper.my_helper()``) and any public attribute of the
    model (``wrapper.some_setting``) are reachable on the wrapper too, always the model's current
    value (the original aitoolbox copied ``transfer_model_attributes`` once, at wrapping time).

    Base of :class:`TTDataParallel` and :class:`TTDistributedDataParallel`; usable alone around a
    ``TTModel`` as well (then ``self(...)`` calls the model itself).

    Args:
        module: the ``TTModel`` to expose.
        default_model_methods: the contract methods (kept for the original's signature).
    """

    def __init__(self, module: nn.Module, default_model_methods: Sequence[str] = _DEFAULT_MODEL_METHODS):
        if not isinstance(self, nn.Module):
            self.module = module  # an nn.Module wrapper registered it as its submodule already
        self.default_model_methods = tuple(default_model_methods)

    @property
    def model_view(self) -> ModuleView:
        """The wrapped model as its methods see it: calls run this wrapper."""
        module = self.module
        return ModuleView(self if isinstance(self, nn.Module) else module, module)

    def get_loss(self, batch_data, criterion, device):
        """The wrapped model's ``get_loss`` with ``self(...)`` running through this wrapper."""
        return self.model_view.get_loss(batch_data, criterion, device)

    def get_loss_eval(self, batch_data, criterion, device):
        """The wrapped model's ``get_loss_eval`` with ``self(...)`` running through this wrapper."""
        return self.model_view.get_loss_eval(batch_data, criterion, device)

    def get_predictions(self, batch_data, device):
        """The wrapped model's ``get_predictions`` with ``self(...)`` running through this wrapper."""
        return self.model_view.get_predictions(batch_data, device)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # nn.Module's: parameters, buffers, submodules
        except AttributeError:
            pass
        module = _wrapped_module(self)
        if module is not None and not name.startswith("_"):
            if _user_function(type(module), name) is not None or name in vars(module):
                return getattr(self.model_view, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _wrapped_module(wrapper) -> Any:
    """The wrapped model, read without recursing into ``__getattr__`` (None while being built)."""
    state = vars(wrapper)
    return state.get("_modules", {}).get("module", state.get("module"))


class TTDataParallel(TTParallelBase, nn.DataParallel):
    """``nn.DataParallel`` for a ``TTModel``: its ``get_loss`` / ``get_predictions`` run through DP.

    Without visible GPUs DataParallel simply calls the module.

    Args:
        module: the ``TTModel`` to wrap.
        default_model_methods: see :class:`TTParallelBase`.
        **kwargs: arguments of ``torch.nn.DataParallel`` (``device_ids``, ``output_device``, ``dim``).
    """

    def __init__(self, module: nn.Module, default_model_methods: Sequence[str] = _DEFAULT_MODEL_METHODS,
                 **kwargs: Any):
        nn.DataParallel.__init__(self, module, **kwargs)
        TTParallelBase.__init__(self, module, default_model_methods)


class TTDistributedDataParallel(TTParallelBase, DistributedDataParallel):
    """``DistributedDataParallel`` for a ``TTModel``: ``self(...)`` in its methods synchronises gradients.

    Args:
        module: the ``TTModel`` to wrap.
        default_model_methods: see :class:`TTParallelBase`.
        **kwargs: arguments of ``torch.nn.parallel.DistributedDataParallel``.
    """

    def __init__(self, module: nn.Module, default_model_methods: Sequence[str] = _DEFAULT_MODEL_METHODS,
                 **kwargs: Any):
        DistributedDataParallel.__init__(self, module, **kwargs)
        TTParallelBase.__init__(self, module, default_model_methods)

"""Freezing and unfreezing parts of a model for fine-tuning (transfer learning).

Two abstractions:

* a *layer group* is a module assigned as an attribute of the model (its direct children, in
  definition order), such as a backbone, a block or a head;
* a *layer* is a module inside a group that has no child modules or holds parameters of its own
  (``Linear``, ``BatchNorm1d``, ``ReLU``, ...), in the order of ``model.modules()``.

Group indexes may be negative, as for Python lists. Parameters assigned directly to the model
(not inside a child module) belong to no group and are never touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from aitoolbox.torchtrain.ema import unwrap_parallel


@dataclass
class LayerGroup:
    """A direct child module of the model.

    Attributes:
        index: position among the model's children.
        name: attribute name in the model.
        module: the module.
    """

    index: int
    name: str
    module: nn.Module

    @property
    def is_frozen(self) -> bool:
        """True when none of the group's parameters is trainable (and it has some)."""
        params = list(self.module.parameters())
        return bool(params) and not any(p.requires_grad for p in params)


@dataclass
class Layer:
    """A leaf module (or one with its own parameters) inside a layer group.

    Attributes:
        layer_group_index: index of the group the layer belongs to.
        name: qualified name in the model, e.g. ``'block_1.2.0'``.
        module: the module.
    """

    layer_group_index: int
    name: str
    module: nn.Module

    @property
    def is_frozen(self) -> bool:
        """True when the layer has parameters and none of them is trainable."""
        params = list(self.module.parameters(recurse=False))
        return bool(params) and not any(p.requires_grad for p in params)


class ModelFreezer:
    """Freeze and unfreeze layer groups of a model.

    Args:
        model: the model (a DataParallel / DDP wrapper is looked through).
        freeze_batch_norms: also freeze BatchNorm layers; by default they stay trainable, which
            usually fine-tunes better.
    """

    def __init__(self, model: nn.Module, freeze_batch_norms: bool = False):
        self.model = unwrap_parallel(model)
        self.freeze_batch_norms = freeze_batch_norms

    def get_layer_groups(self) -> List[LayerGroup]:
        """The model's layer groups: its direct child modules, in definition order."""
        return [LayerGroup(idx, name, module)
                for idx, (name, module) in enumerate(self.model.named_children())]

    def get_layers(self) -> List[Layer]:
        """Every layer of every group, in module order."""
        layers = []
        for group in self.get_layer_groups():
            for name, module in group.module.named_modules(prefix=group.name):
                has_own_params = any(True for _ in module.parameters(recurse=False))
                if has_own_params or not any(True for _ in module.children()):
                    layers.append(Layer(group.index, name, module))
        return layers

    def get_trainable_parameters(self) -> List[nn.Parameter]:
        """The parameters of the model that currently require gradients."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def freeze(self, from_index: int = 0, to_index: int = -2, set_modules_as_eval: bool = False) -> None:
        """Freeze the layer groups ``from_index`` to ``to_index`` (both included).

        By default every group but the last is frozen. BatchNorm layers are left trainable unless
        ``freeze_batch_norms`` was set.

        Args:
            from_index: first group to freeze.
            to_index: last group to freeze.
            set_modules_as_eval: also put the frozen layers in eval mode.
        """
        for layer in self._layers_between(from_index, to_index):
            params = list(layer.module.parameters(recurse=False))
            for param in params:
                param.requires_grad_(False)
            if set_modules_as_eval and params:
                layer.module.eval()

    def unfreeze(self, from_index: int = -1, to_index: int = 0,
                 set_modules_as_training: bool = True) -> Dict[int, Dict[str, List[nn.Parameter]]]:
        """Unfreeze the layer groups between ``from_index`` and ``to_index`` (both included).

        Args:
            from_index: one end of the range of groups.
            to_index: the other end.
            set_modules_as_training: also put the unfrozen layers in training mode.

        Returns:
            group index -> ``{'params': [parameters unfrozen by this call]}``, for the groups that
            had frozen parameters; each value can go straight into
            ``optimizer.add_param_group`` when the optimizer does not hold them yet.
        """
        unfrozen: Dict[int, Dict[str, List[nn.Parameter]]] = {}
        for layer in self._layers_between(from_index, to_index):
            params = [p for p in layer.module.parameters(recurse=False) if not p.requires_grad]
            for param in params:
                param.requires_grad_(True)
            if params:
                unfrozen.setdefault(layer.layer_group_index, {"params": []})["params"].extend(params)
                if set_modules_as_training:
                    layer.module.train()
        return unfrozen

    def _layers_between(self, from_index: int, to_index: int) -> List[Layer]:
        lo, hi = sorted((self._resolve(from_index), self._resolve(to_index)))
        return [layer for layer in self.get_layers() if lo <= layer.layer_group_index <= hi
                and (self.freeze_batch_norms or not isinstance(layer.module, _BatchNorm))]

    def _resolve(self, index: int) -> int:
        num_groups = len(self.get_layer_groups())
        resolved = index + num_groups if index < 0 else index
        if not 0 <= resolved < num_groups:
            raise IndexError(f"layer group index {index} is out of range for a model with {num_groups} "
                             "layer groups.")
        return resolved

"""ModelFreezer on a model with three layer groups."""
import pytest
import torch
from torch import nn

from aitoolbox.torchtrain.finetuning import ModelFreezer
from tests.callbacks.cb_testkit import make_loop


class ThreeGroups(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.input = nn.Linear(4, 6)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6),
                                   nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.ReLU()))
        self.output = nn.Linear(6, 1)

    def forward(self, x):
        return self.output(self.block(self.input(x)))


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def names_of(model, params):
    by_id = {id(p): name for name, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


BN = {"block.1.weight", "block.1.bias", "block.2.1.weight", "block.2.1.bias"}
ALL = {"input.weight", "input.bias", "block.0.weight", "block.0.bias", "block.2.0.weight", "block.2.0.bias",
       "output.weight", "output.bias"} | BN


def test_layer_groups_and_layers():
    freezer = ModelFreezer(ThreeGroups())
    assert [(g.index, g.name) for g in freezer.get_layer_groups()] == [(0, "input"), (1, "block"), (2, "output")]
    assert [(l.layer_group_index, l.name, type(l.module).__name__) for l in freezer.get_layers()] == [
        (0, "input", "Linear"), (1, "block.0", "Linear"), (1, "block.1", "BatchNorm1d"),
        (1, "block.2.0", "Linear"), (1, "block.2.1", "BatchNorm1d"), (1, "block.2.2", "ReLU"),
        (2, "output", "Linear")]


def test_freeze_all_but_the_last_group_keeps_batch_norms_trainable():
    model = ThreeGroups()
    freezer = ModelFreezer(model)
    freezer.freeze()
    assert trainable_names(model) == {"output.weight", "output.bias"} | BN
    assert names_of(model, freezer.get_trainable_parameters()) == trainable_names(model)
    assert [g.is_frozen for g in freezer.get_layer_groups()] == [True, False, False]


def test_freeze_batch_norms_and_eval_mode():
    model = ThreeGroups()
    freezer = ModelFreezer(model, freeze_batch_norms=True)
    freezer.freeze(from_index=1, to_index=1, set_modules_as_eval=True)
    assert trainable_names(model) == {"input.weight", "input.bias", "output.weight", "output.bias"}
    assert not model.block[1].training and not model.block[0].training and model.input.training
    assert freezer.get_layer_groups()[1].is_frozen


def test_unfreeze_returns_the_unfrozen_parameters_per_group():
    model = ThreeGroups()
    freezer = ModelFreezer(model)
    freezer.freeze(set_modules_as_eval=True)
    unfrozen = freezer.unfreeze(from_index=-2, to_index=-2)
    assert list(unfrozen) == [1]
    assert names_of(model, unfrozen[1]["params"]) == {"block.0.weight", "block.0.bias",
                                                      "block.2.0.weight", "block.2.0.bias"}
    assert trainable_names(model) == ALL - {"input.weight", "input.bias"}
    assert model.block[0].training
    assert freezer.unfreeze(1, 2) == {}  # nothing left frozen there
    everything = freezer.unfreeze(from_index=-1, to_index=0)
    assert list(everything) == [0] and trainable_names(model) == ALL


def test_frozen_parameters_do_not_train_and_unfrozen_ones_join_the_optimizer():
    model = ThreeGroups()
    freezer = ModelFreezer(model)
    freezer.freeze()
    optimizer = torch.optim.SGD(freezer.get_trainable_parameters(), lr=0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    make_loop(model=model, optimizer=optimizer).fit(num_epochs=1)
    after = model.state_dict()
    assert torch.equal(before["input.weight"], after["input.weight"])
    assert torch.equal(before["block.0.weight"], after["block.0.weight"])
    assert not torch.equal(before["output.weight"], after["output.weight"])
    assert not torch.equal(before["block.1.weight"], after["block.1.weight"])
    for group in freezer.unfreeze(from_index=0, to_index=0).values():
        optimizer.add_param_group({**group, "lr": 0.01})
    make_loop(model=model, optimizer=optimizer).fit(num_epochs=1)
    assert not torch.equal(before["input.weight"], model.input.weight)


def test_index_out_of_range():
    with pytest.raises(IndexError, match="out of range"):
        ModelFreezer(ThreeGroups()).freeze(0, 3)

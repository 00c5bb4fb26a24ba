"""The original aitoolbox's smaller pieces: multi-GPU models, TTParallelBase, DDPHandler,
callbacks.ddp, datasets, MessageHandling / write_message / read_messages, ModelPredictionStore."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import ddp_helpers as helpers
from _loop_helpers import loader, make_data
from aitoolbox import BasicDataset, MultiGPUModelWrap, TrainLoop, TTModel
from aitoolbox.torchtrain.callbacks.ddp import DistributedSamplerSetEpoch, InMultiProcessDataLoad
from aitoolbox.torchtrain.data.dataset import ListDataset
from aitoolbox.torchtrain.model import TTBasicMultiGPUModel, combine_replica_losses
from aitoolbox.torchtrain.parallel import TTDataParallel, TTParallelBase
from aitoolbox.torchtrain.train_loop.components.ddp_handler import DDPHandler
from aitoolbox.torchtrain.train_loop.components.message_passing import Message, MessageHandling, MessageService
from aitoolbox.torchtrain.train_loop.components.model_prediction_store import ModelPredictionStore


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(helpers.NUM_FEATURES, 8), nn.Tanh(), nn.Linear(8, 1))


# ---------------------------------------------------------------- multi-GPU models
class LossInForward(TTBasicMultiGPUModel):
    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x, targets=None, criterion=None):
        out = self.net(x)
        return criterion(out, targets) if criterion is not None else out


@pytest.mark.parametrize("gpu_mode", ["single", "dp"])
def test_multi_gpu_models_train_like_a_plain_module(gpu_mode):
    wrapped, subclass, reference = _net(), LossInForward(), _net()
    for model in (MultiGPUModelWrap(wrapped), subclass):
        loop = helpers.make_loop(model, 16, gpu_mode=gpu_mode, val_data=False)
        loop.fit(num_epochs=2)
    helpers.make_loop(reference, 16, val_data=False).fit(num_epochs=2)
    assert helpers.max_weight_diff(wrapped, reference) == 0.0
    assert helpers.max_weight_diff(subclass.net, reference) == 0.0
    y_pred, y_true, _ = TrainLoop(MultiGPUModelWrap(wrapped), None, DataLoader(helpers.validation_set(), 10),
                                  None, None, None, gpu_mode=gpu_mode).predict_on_validation_set()
    with torch.no_grad():
        expected = reference(helpers.validation_set().tensors[0])
    assert y_pred.shape == (101, 1) and torch.allclose(y_pred, expected, atol=1e-6)


def test_multi_gpu_model_wrap_needs_a_module():
    with pytest.raises(TypeError, match="MultiGPUModelWrap model must be a torch.nn.Module"):
        MultiGPUModelWrap("not a model")


def test_replica_losses_are_weighted_by_their_share_of_the_batch():
    targets = torch.zeros(5)  # DataParallel over 2 devices: chunks of 3 and 2 samples
    assert combine_replica_losses(torch.tensor([1.0, 4.0]), targets).item() == pytest.approx((3 * 1 + 2 * 4) / 5)
    scalar = torch.tensor(2.5)
    assert combine_replica_losses(scalar, targets) is scalar


# ---------------------------------------------------------------- TTParallelBase
class MyModel(TTModel):
    def __init__(self):
        super().__init__()
        self.model_level_str = "test string"
        self.linear = nn.Linear(2, 2)
        self.forward_ctr = 0

    def forward(self, x):
        self.forward_ctr += 1
        return self.forward_ctr

    def get_loss(self, batch_data, criterion, device):
        return self(batch_data), self.my_new_fn(), self.model_level_str

    def get_predictions(self, batch_data, device):
        return "predictions_return"

    def my_new_fn(self):
        return "my_new_fn return value"


@pytest.mark.parametrize("wrapper_cls", [TTParallelBase, TTDataParallel])
def test_parallel_wrappers_expose_the_model_methods_and_attributes(wrapper_cls):
    model = MyModel()
    wrapper = wrapper_cls(model)
    assert wrapper.get_loss(None, None, None) == (1, "my_new_fn return value", "test string")
    assert wrapper.get_loss_eval(None, None, None) == (2, "my_new_fn return value", "test string")
    assert wrapper.get_predictions(None, None) == "predictions_return"
    assert wrapper.my_new_fn() == "my_new_fn return value"
    model.model_level_str = "changed"
    assert wrapper.model_level_str == "changed"  # the live value, not a copy
    with pytest.raises(AttributeError):
        wrapper.not_an_attribute  # noqa: B018


def test_tt_data_parallel_is_both():
    wrapper = TTDataParallel(MyModel())
    assert isinstance(wrapper, nn.DataParallel) and isinstance(wrapper, TTParallelBase)
    assert wrapper(None) == 1 and wrapper.module.forward_ctr == 1  # the call runs the wrapper, counts on the model


# ---------------------------------------------------------------- DDPHandler / callbacks.ddp
def _pairs_loader(**kwargs):
    return DataLoader(BasicDataset([(1, 2) for _ in range(100)]), **kwargs)


def test_ddp_handler_adds_distributed_samplers():
    loop = TrainLoop(nn.Linear(1, 1), _pairs_loader(shuffle=True), _pairs_loader(batch_size=4), None, None, None)
    DDPHandler(loop).add_distributed_samplers(world_size=4, rank=1)
    train_sampler, val_sampler = loop.train_loader.sampler, loop.validation_loader.sampler
    assert isinstance(train_sampler, DistributedSampler) and isinstance(val_sampler, DistributedSampler)
    assert (train_sampler.num_replicas, train_sampler.rank, train_sampler.shuffle) == (4, 1, True)
    assert (val_sampler.shuffle, loop.validation_loader.batch_size, loop.test_loader) == (False, 4, None)
    cb = loop.callbacks[0]
    assert isinstance(cb, DistributedSamplerSetEpoch)
    assert (cb.train_sampler, cb.validation_sampler, cb.test_sampler) == (train_sampler, val_sampler, None)


def test_build_loader_sampler_keeps_the_loader_settings():
    original = _pairs_loader(batch_size=7, drop_last=True, collate_fn=list)
    new_loader, sampler = DDPHandler.build_loader_sampler(original, shuffle=True, world_size=2, rank=0)
    assert new_loader.sampler is sampler and sampler.shuffle and sampler.num_replicas == 2
    assert (new_loader.batch_size, new_loader.drop_last, new_loader.collate_fn) == (7, True, list)


class RecordEpochs:
    def __init__(self):
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def test_ddp_callbacks_are_accepted_in_a_single_process_fit():
    sampler = RecordEpochs()
    built = []
    data_load = InMultiProcessDataLoad(train_loader_build_fn=lambda: built.append(1))
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, 16, val_data=False)
    loop.fit(num_epochs=2, callbacks=[DistributedSamplerSetEpoch(sampler, None, None), data_load])
    assert sampler.epochs == [0, 1] and loop.epoch == 2
    assert built == []  # outside DDP there is no process start: the loaders are kept


def test_in_multi_process_data_load_replaces_the_loaders_at_process_start():
    new_val = loader(make_data(10))
    loop = TrainLoop(nn.Linear(8, 3), loader(make_data(10)), None, None, None, None)
    cb = InMultiProcessDataLoad(val_loader_build_fn=lambda: new_val, test_loader_build_fn=False)
    cb.register_train_loop_object(loop)
    cb.on_multiprocess_start()
    assert loop.validation_loader is new_val and loop.test_loader is None


# ---------------------------------------------------------------- datasets
def test_basic_and_list_datasets():
    ds = BasicDataset(list(range(10)))
    assert len(ds) == 10 and [ds[i] for i in range(10)] == list(range(10))
    a, b = [[i] * (i % 3) for i in range(9)], [str(i) for i in range(9)]
    batches = list(DataLoader(ListDataset(a, b), batch_size=4, collate_fn=lambda batch: list(zip(*batch))))
    assert [list(x) for x, _ in batches] == [a[0:4], a[4:8], a[8:]]
    assert [list(y) for _, y in batches] == [b[0:4], b[4:8], b[8:]]
    with pytest.raises(ValueError, match="same length"):
        ListDataset([1, 2], [1])


# ---------------------------------------------------------------- message passing: the original's API
def _content(service):
    return {k: [(m.key, m.value, m.msg_handling_settings) for m in v] for k, v in service.message_store.items()}


def test_message_handling_enum_and_original_write_read_semantics():
    assert [m.name for m in MessageHandling] == ["KEEP_FOREVER", "UNTIL_END_OF_EPOCH", "UNTIL_READ", "OVERWRITE"]
    ms = MessageService()
    ms.write_message("k", 1)
    ms.write_message("k", 2, MessageHandling.UNTIL_READ)
    ms.write_message("forever", "f", [MessageHandling.KEEP_FOREVER])
    assert _content(ms)["k"] == [("k", 1, [MessageHandling.UNTIL_END_OF_EPOCH]), ("k", 2, [MessageHandling.UNTIL_READ])]
    assert ms.read_messages("k") == [1, 2]
    assert ms.read_messages("k") == [1]
    ms.write_message("once", 3, [MessageHandling.UNTIL_READ, MessageHandling.OVERWRITE])
    ms.write_message("once", 4, [MessageHandling.UNTIL_READ, MessageHandling.OVERWRITE])
    assert ms.read_messages("once") == [4]
    assert ms.read_messages("once") == [] and "once" in ms.message_store  # kept, empty, until the epoch ends
    ms.end_of_epoch_trigger()
    assert _content(ms) == {"forever": [("forever", "f", [MessageHandling.KEEP_FOREVER])]}
    assert ms.read_messages("missing") is None
    with pytest.raises(TypeError):
        ms.write_message("k", 1, "unsupported_setting")
    with pytest.raises(TypeError):
        ms.write_message("k", 1, [MessageHandling.UNTIL_READ, "x"])
    with pytest.raises(ValueError):
        ms.write_message("k", 1, [MessageHandling.UNTIL_END_OF_EPOCH, MessageHandling.UNTIL_READ])
    assert Message("a", 1, MessageHandling.UNTIL_READ).msg_handling_settings == [MessageHandling.UNTIL_READ]


def test_our_write_accepts_message_handling_and_both_spellings_share_the_store():
    ms = MessageService()
    ms.write("k", 1, MessageHandling.UNTIL_READ)
    ms.write_message("k", 2)
    assert ms.read("k") == [1, 2]
    assert ms.read_messages("k") == [2]


# ---------------------------------------------------------------- ModelPredictionStore
def test_model_prediction_store_original_methods():
    store = ModelPredictionStore(auto_purge=True)
    assert not store.has_val_predictions(0)
    store.insert_val_predictions(("p", "t", None), 0)
    store.insert_train_loss(0.5, 0)
    assert store.has_val_predictions(0) and store.get_val_predictions(0) == ("p", "t", None)
    assert store.get_train_loss(0) == 0.5 and not store.has_test_loss(0)
    with pytest.raises(ValueError, match="force_prediction=True"):
        store.insert_val_predictions("again", 0)
    store.insert_val_predictions("again", 0, force_prediction=True)
    assert store.get_val_predictions(0) == "again"
    store.insert_test_loss(1.0, 1)  # a later iteration: auto purge
    assert not store.has_train_loss(0) and not store.has_train_loss(1) and store.get_test_loss(1) == 1.0
    with pytest.raises(ValueError, match="No val_pred"):
        store.get_val_predictions(1)


def test_model_prediction_store_reads_what_the_train_loop_cached():
    loop = TrainLoop(nn.Linear(8, 3), None, loader(make_data(10)), None, None, None)
    loop.prediction_store = ModelPredictionStore()
    result = loop.predict_on_validation_set()
    assert loop.prediction_store.get_val_predictions(loop.weights_version) is result

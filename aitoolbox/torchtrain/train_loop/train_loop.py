"""``TrainLoop``: the public API and the epoch / batch loop - nothing else.

Device placement and parallelism live in the device strategy, mixed precision in the AMP handler,
hook dispatch in the callbacks handler, caching in the prediction store, checkpoint state in
``components/checkpointing.py`` and the evaluation / prediction methods, which ``TrainLoop``
inherits, in ``components/evaluation_api.py``.
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

from aitoolbox.experiment.experiment_folder import new_timestamp
from aitoolbox.experiment.training_history import TrainingHistory
from aitoolbox.torchtrain.callbacks.metric_watch import warn_missing_metrics
from aitoolbox.torchtrain.model import split_model
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss, MultiOptimizer
from aitoolbox.torchtrain.callbacks.stop_signal import with_default_stop
from aitoolbox.torchtrain.train_loop.components import checkpointing, preemption
from aitoolbox.torchtrain.train_loop.components.amp_handler import AmpHandler, UseAmp, scaler_arguments
from aitoolbox.torchtrain.train_loop.components.callback_handler import CallbacksHandler
from aitoolbox.torchtrain.train_loop.strategies import make_strategy
from aitoolbox.torchtrain.train_loop.components.message_passing import MessageService
from aitoolbox.torchtrain.train_loop.components.evaluation_api import EvaluationAPI
from aitoolbox.torchtrain.train_loop.components.pred_collate_fns import append_predictions, torch_cat_transf
from aitoolbox.torchtrain.train_loop.components.prediction_store import PredictionStore
from aitoolbox.torchtrain.train_loop.components import validation
from aitoolbox.torchtrain.train_loop.components import loss_weighting as weighting
from aitoolbox.torchtrain.train_loop.components import reproducibility, rng_state
from aitoolbox.torchtrain.train_loop.components.streams import StreamState, has_length
from aitoolbox.torchtrain.train_loop.components.loss_values import LossValues
from aitoolbox.torchtrain.callbacks.progress import format_duration, format_value
from aitoolbox.utils.log import get_logger

#: how the epoch line names the loop's own history keys (others appear under their names)
_EPOCH_LINE_LABELS = {"accumulated_loss": "mean batch loss", "loss": "train-set loss", "val_loss": "val_loss"}


class TrainLoop(EvaluationAPI):
    """Trains a model and predicts with it; the core of ``aitoolbox``.

    The loop, with every hook in the order it runs (``cb.`` marks a callback hook)::

        fit(num_epochs | num_iterations, callbacks, grad_accumulation, loss_weighting)
          cb.on_train_loop_registration()            (each callback, when registered)
          cb.on_multiprocess_start()                 (gpu_mode='ddp' / 'fsdp', in every process)
          cb.on_train_begin()
          while epochs / iterations remain and not early_stop:
              model.train(); cb.on_epoch_begin()
              for batch in train_loader:
                  cb.on_batch_begin()
                  loss = _calculate_batch_loss(batch)             (under autocast)
                  loss /= size of this accumulation window
                  _backward_pass(loss, i) for each optimizer i    (no_sync() unless stepping)
                  (loss_weighting 'samples' / 'tokens', or a loader without a length: the loss
                   is scaled by its weight instead, the window's gradients once before the
                   step - components/loss_weighting.py; a stream is read one batch ahead)
                  if should_execute_optimizer_update():
                      for each optimizer i:
                          cb.on_after_gradient_update(i)          (clip gradients here)
                          _optimizer_step(i); _optimizer_zero_grad(i)
                      scaler update; cb.on_after_optimizer_step() (per-step schedulers)
                  cb.on_batch_end()
              history['accumulated_loss'] <- mean training batch loss
              auto_execute_end_of_epoch()    (history 'loss', 'val_loss'; per end_auto_eval)
              cb.on_epoch_end()
          auto_execute_end_of_training()     (history 'train_end_test_loss')
          cb.on_train_end()

    Args:
        model: a ``TTModel``, a ``ModelWrap`` or a plain ``nn.Module`` (fed ``(*inputs, target)``
            batches like ``TTBasicModel``).
        train_loader: loader of the training set; None for a loop that only predicts / evaluates
            (``fit`` then raises).
        validation_loader: loader of the validation set, or None.
        test_loader: loader of the test set, or None.
        optimizer: a ``torch.optim.Optimizer`` or a ``MultiOptimizer``; None for prediction only.
        criterion: the loss module handed to the model's ``get_loss``, or a ``MultiLoss`` / None
            when the model computes its losses itself.
        collate_batch_pred_fn: ``fn(batch_pred, all_preds)`` collecting batch predictions.
        pred_transform_fn: ``fn(all_preds)`` applied once to the collected predictions.
        end_auto_eval: evaluate the train (and validation / test) loss at the end of every
            epoch (True), never (False), or every n-th epoch (an int n).
        lazy_experiment_save: tracking TrainLoops create the experiment folder only once the
            first results exist.
        print_callbacks: log the registered callbacks when training starts.
        gpu_mode: ``'single'`` (CPU or one GPU), ``'dp'`` (DataParallel), ``'ddp'``
            (DistributedDataParallel) or ``'fsdp'`` (fully sharded, FSDP2).
        cuda_device_idx: the CUDA device to use in ``'single'`` mode; None: the default one.
        use_amp: mixed precision (autocast), in every ``gpu_mode``:

            * ``False``: float32;
            * ``True``: the device's usual choice, float16 with a ``torch.amp.GradScaler`` on
              CUDA, bfloat16 on CPU;
            * ``'bf16'`` / ``'bfloat16'`` / ``torch.bfloat16``: bfloat16 without loss scaling,
              on CUDA and CPU;
            * ``'fp16'`` / ``'float16'`` / ``torch.float16``: float16 with a GradScaler (CUDA only:
              on the CPU it is an error, raised before any work);
            * a dict: ``torch.amp.GradScaler`` arguments as for ``True``, plus an optional
              ``'dtype'`` entry naming the dtype as above (e.g. ``{'dtype': 'fp16', 'init_scale': 1024.0}``).
        show_progress: show the progress of each epoch on the main process: a tqdm bar with the
            running mean batch loss on a terminal (or notebook), plain lines every 30 s when
            stderr is not a terminal (CI, SLURM, ``nohup``; see ``callbacks.progress``).
        torch_compile: ``torch.compile`` the model before training (False, True, or a dict of
            ``torch.compile`` arguments).
        quiet: no progress display and no per-epoch / end-of-training lines (warnings and the
            callbacks' own reports still go to the ``aitoolbox`` logger).

    Console output: at the end of every epoch the main process logs one INFO line through the
    ``aitoolbox`` logger with what the epoch recorded into the history, 4 significant digits::

        Epoch 2/10: mean batch loss 0.4113, train-set loss 0.3981, val_loss 0.4272, val_Accuracy 0.86 (3.2s)

    ``mean batch loss`` is ``accumulated_loss`` (the mean of the epoch's training batch losses);
    ``train-set loss`` is ``loss``, the loss re-evaluated on the whole training set after the
    epoch (eval mode); every other value is shown under its history name. Silence the lines with
    ``quiet=True`` or ``logging.getLogger("aitoolbox").setLevel(logging.WARNING)``.

    Raises:
        ValueError, TypeError: an invalid argument, named in the message, before any work.
    """

    def __init__(self, model, train_loader, validation_loader, test_loader, optimizer, criterion,
                 collate_batch_pred_fn: Callable = append_predictions,
                 pred_transform_fn: Callable = torch_cat_transf,
                 end_auto_eval: Union[bool, int] = True, lazy_experiment_save: bool = False,
                 print_callbacks: bool = False, gpu_mode: str = "single",
                 cuda_device_idx: Optional[int] = None, use_amp: UseAmp = False,
                 show_progress: bool = True, torch_compile: Union[bool, dict] = False,
                 quiet: bool = False):
        validation.validate_init_args(model, train_loader, validation_loader, test_loader, optimizer,
                                      criterion, end_auto_eval, use_amp, torch_compile,
                                      flags=dict(show_progress=show_progress, print_callbacks=print_callbacks,
                                                 lazy_experiment_save=lazy_experiment_save))
        self.model = model
        self.train_loader, self.validation_loader, self.test_loader = (
            train_loader, validation_loader, test_loader)
        self.optimizer, self.criterion = optimizer, criterion
        self.collate_batch_pred_fn, self.pred_transform_fn = collate_batch_pred_fn, pred_transform_fn
        self.end_auto_eval, self.lazy_experiment_save = end_auto_eval, lazy_experiment_save
        self.print_callbacks, self.show_progress = print_callbacks, show_progress
        self.gpu_mode, self.cuda_device_idx, self.use_amp = gpu_mode, cuda_device_idx, use_amp
        self.torch_compile = torch_compile
        self.quiet = bool(quiet)
        #: where the progress display writes (None: ``sys.stderr``); a bar on a terminal, else lines
        self.progress_stream = None
        self._init_device_and_optimizers()

        self.train_history = TrainingHistory(has_validation=validation_loader is not None)
        self.callbacks_handler = CallbacksHandler(self)
        self.message_service = MessageService()
        self.prediction_store = PredictionStore()
        self.logger = get_logger()
        self._init_progress_state()
        self._init_compat_attributes(use_amp)

    def _init_device_and_optimizers(self) -> None:
        """The device strategy, the model as it runs there, the AMP handler and the optimizer list."""
        self.strategy = make_strategy(self.gpu_mode, self.cuda_device_idx)
        self.device = self.strategy.device
        self.module, self.feed_def = split_model(self.model)
        self.feed = self.strategy.setup_model(self.module, self.feed_def)
        self.amp_handler = AmpHandler(self.use_amp, self.device)
        self.strategy.setup_precision(self.amp_handler, self.module)
        optimizer = self.optimizer
        self.optimizers = (list(optimizer) if isinstance(optimizer, MultiOptimizer)
                           else [] if optimizer is None else [optimizer])
        self._optimizer_indices = range(len(self.optimizers))
        # A MultiOptimizer subclass's own step / zero_grad is called instead of ours.
        self._user_optimizer_step = _overrides(optimizer, MultiOptimizer, "step")
        self._user_zero_grad = _overrides(optimizer, MultiOptimizer, "zero_grad")

    def _init_compat_attributes(self, use_amp) -> None:
        """aitoolbox 1.8's attributes that callbacks written for it read (none is on the hot path)."""
        self.batch_model_feed_def = self.feed_def
        self.num_optimizers = len(self.optimizers)
        self.amp_scaler_init = scaler_arguments(use_amp)
        #: set by callbacks written for aitoolbox 1.8; the gradient hooks run whenever implemented
        self.grad_cb_used = False
        self.ddp_handler = None
        self._experiment_timestamp = new_timestamp()

    def _init_progress_state(self) -> None:
        """Counters and bookkeeping of the run (all restored from a checkpoint on resume)."""
        self.epoch = 0  # index of the current epoch
        self.iteration = 0  # index of the current batch within the epoch
        self.total_iteration_idx = 0  # batches trained on over the whole run
        self.num_optimizer_steps = 0  # real optimizer updates over the whole run
        self.weights_version = 0  # bumped whenever the weights change: invalidates the cache
        self.num_epochs, self.num_iterations, self.grad_accumulation = 0, 0, 1
        self.loss_weighting = "batches"  # fit's loss_weighting (set before the ranks are launched)
        self._run_seed: Optional[int] = None  # fit's seed when it seeded this run (read by the ranks)
        self._deterministic: Union[bool, str] = False  # fit's deterministic (applied in each rank too)
        self.early_stop = False
        self._stop_request: Optional[int] = None  # the stop signal every rank agreed on (see preemption.py)
        self._stop_control = None  # the registered StopOnSignal callback, if any
        self.loss_batch_accum: List = []
        self._loss_values = LossValues()  # their floats, converted once (progress display, epoch mean)
        self.loss_weight_accum: List = []  # the batches' weights ('samples' / 'tokens' weighting)
        # Chosen once per fit: the state of a length-less train loader (else None) and the
        # weighted accumulation (else None: the plain per-batch path).
        self._stream: Optional[StreamState] = None
        self._window: Optional[weighting.WindowWeighting] = None
        self._pending_stream_position: Optional[tuple] = None  # (iteration, state) of a checkpoint
        self.epoch_start_rng: Optional[dict] = None
        # batches in the current epoch (set at each epoch start); the loader's length until then
        self._epoch_len = _length_or_zero(self.train_loader)
        self._pending_callback_state: Optional[dict] = None
        self._pending_grads: Optional[list] = None
        self._checkpoint_phase = None  # 'batch_end' / 'epoch_end' while those hooks run
        self._eval_loaders: Dict[int, Any] = {}
        self._check_empty_batches = False  # set per fit: whether the train loader can yield empty batches
        self._unverified_metrics: list = []  # watched metrics to look for after the first epoch
        # History lengths before / after the end-of-epoch work of an epoch that num_iterations cut
        # short: (epoch, before, after); the epoch's completion replaces those values.
        self._provisional_history: Optional[tuple] = None
        self._epoch_close_marks: Dict[str, int] = {}  # history lengths when the epoch's end began
        self._epoch_start_time = 0.0
        self.current_batch = None  # the training batch being processed (read by callbacks in the batch hooks)

    # ------------------------------------------------------------------ public training API
    def fit(self, num_epochs: int = 0, num_iterations: int = 0, callbacks: Optional[Sequence] = None,
            grad_accumulation: int = 1, loss_weighting: str = "batches", seed: Optional[int] = None,
            deterministic: Union[bool, str] = False, **kwargs):
        """Train the model.

        ``num_epochs`` / ``num_iterations`` are totals to reach: a loop resumed from a checkpoint
        (or fitted before) continues where it stopped. Exactly one of them is given.

        A ``num_iterations`` stop in the middle of an epoch runs that epoch's end as usual
        (``accumulated_loss`` over the batches done, the end-of-epoch evaluation, the callbacks'
        ``on_epoch_end``), so the run's last state is in the history. Those values are provisional:
        when a later ``fit`` of this loop completes the epoch, the values the stop recorded are
        replaced by the complete epoch's, so that every per-epoch key keeps one value per epoch
        (``fit(num_iterations=30)`` then ``fit(num_epochs=3)`` leaves 3 ``val_loss`` values). The
        replacement is not carried by a checkpoint taken at the stop.

        A ``train_loader`` without a length (an ``IterableDataset``, a generator-backed loader)
        trains too: an epoch is one pass until it is exhausted (see ``docs/streams.md``).

        Args:
            num_epochs: train until this many epochs are done.
            num_iterations: train until this many batches are done (may stop mid-epoch).
            callbacks: ``AbstractCallback`` instances for this run.
            grad_accumulation: accumulate gradients over this many batches per optimizer step.
            loss_weighting: how the batches of an accumulation window (on all ranks) combine:
                ``'batches'`` (each the same), ``'samples'`` (by number of samples: the update of
                one big batch) or ``'tokens'`` (``get_loss`` returns a ``LossSum(loss_sum,
                num_items)``; divided by the window's item count). See ``docs/streams.md``.
            seed: seed torch (CPU, CUDA), ``random`` and NumPy when the run starts, before the loop
                draws (shuffling, dropout, workers' seeds; build the model before: its initialisation
                is yours). Under DDP / FSDP rank ``r`` gets its own streams from ``(seed, r)`` and the
                sampler shuffles with ``seed`` on every rank (unless the loader has a generator of its
                own). A loop that continues a run (it has trained, or a checkpoint was loaded) is not
                reseeded: the saved RNG states win. None: not seeded.
            deterministic: True: deterministic kernels (``torch.use_deterministic_algorithms(True)``:
                an operation without a deterministic implementation raises), cuDNN deterministic
                without benchmarking, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set; ``'warn'``: the
                same, warning instead of raising. Process-global: it stays on after ``fit``, in this
                process and in the ranks it starts. False: leaves the settings as they are.
            **kwargs: arguments of the device strategy: ``dp_model_args`` for ``gpu_mode='dp'``;
                ``ddp_model_args``, ``in_process_data_load``, ``num_nodes``, ``node_rank``,
                ``num_gpus``, ``backend``, ``init_method``, ``on_gpu``, ``timeout`` for ``gpu_mode='ddp'``;
                the same with ``fsdp_args`` instead of ``ddp_model_args`` for ``gpu_mode='fsdp'``
                (see ``docs/distributed.md``).

        Returns:
            The trained model (the object passed to the TrainLoop).

        Raises:
            ValueError, TypeError: invalid arguments, before any training work.
        """
        validation.validate_fit_args(self, num_epochs, num_iterations, callbacks, grad_accumulation)
        weighting.check_loss_weighting(loss_weighting)
        reproducibility.check_fit_args(seed, deterministic)
        validation.validate_strategy_kwargs(self.gpu_mode, kwargs, self.use_amp)
        strategy_args = self.strategy.check_fit_kwargs(kwargs)
        self._unverified_metrics = validation.check_callbacks(
            self, self.callbacks_handler.callbacks_cache + list(callbacks or []))
        train_args = dict(num_epochs=num_epochs, num_iterations=num_iterations,
                          callbacks=list(callbacks or []), grad_accumulation=grad_accumulation)
        self.loss_weighting = loss_weighting  # an attribute: it travels with the loop to spawned ranks
        reproducibility.apply_fit_args(self, seed, deterministic)  # last: nothing draws before the run
        return self.strategy.launch(self, train_args, strategy_args)

    def __call__(self, num_epochs: int = 0, num_iterations: int = 0,
                 callbacks: Optional[Sequence] = None, grad_accumulation: int = 1,
                 loss_weighting: str = "batches", seed: Optional[int] = None,
                 deterministic: Union[bool, str] = False, **kwargs):
        """Same as :meth:`fit`."""
        # Keywords, and only when given: subclasses' fit overrides of the 1.8 signature take **kwargs.
        for name, value, default in (("loss_weighting", loss_weighting, "batches"), ("seed", seed, None),
                                     ("deterministic", deterministic, False)):
            if value is not default:
                kwargs[name] = value
        return self.fit(num_epochs, num_iterations, callbacks, grad_accumulation, **kwargs)

    def _train(self, num_epochs: int, num_iterations: int, callbacks: Optional[Sequence] = None,
               grad_accumulation: int = 1):
        """Run the training loop in this process (see the class docstring for the hooks)."""
        self._prepare_training(num_epochs, num_iterations, callbacks, grad_accumulation)
        try:
            self.callbacks_handler.execute("on_train_begin")
            while not self._training_done() and not self.early_stop:
                self._train_epoch()
            if self._stop_request is not None:  # a stop signal that arrived during an epoch's end
                raise preemption.stop_exception(self)
            if self._auto_eval_enabled():
                self.auto_execute_end_of_training()
            self.callbacks_handler.execute("on_train_end")
        except BaseException as exc:
            self.callbacks_handler.execute("on_train_crash", exc)
            raise
        return self.model

    def _train_epoch(self) -> None:
        """One epoch (or what is left of it): batches, then the end-of-epoch work."""
        batches = self._open_epoch()
        loader_exhausted = True
        progress = self._open_progress()
        # Without a display the batch index never reaches next_update: one comparison per batch.
        next_update = progress.next_update if progress is not None else math.inf
        try:
            for batch_data in batches:
                self.current_batch = batch_data  # for the batch hooks (e.g. a throughput monitor's sample count)
                # Holding the batch loss until the next one is computed, like a plain loop's `loss`
                # variable, keeps its graph's gradient accumulators: torch reuses them next step.
                loss_batch = self._train_step(batch_data)  # noqa: F841
                if self.iteration >= next_update:
                    progress.update()
                    next_update = progress.next_update
                if self.early_stop:
                    if self._stop_request is not None:  # a stop signal: the batch is complete, exit exactly here
                        raise preemption.stop_exception(self)
                    loader_exhausted = False
                    break
        finally:
            if progress is not None:
                progress.close()
        # A loader that yields fewer batches than its len() (an estimated __len__) still ends the epoch.
        self._close_epoch(loader_exhausted and self._loader_ran_out())

    def _train_step(self, batch_data):
        """One batch: loss, backward, and (when the window is full) the optimizer update.

        The hot path: hooks are called straight from the handler's subscriber lists (empty for
        hooks that no callback implements), not through ``CallbacksHandler.execute``.

        Returns:
            The batch loss (back-propagated already).
        """
        hooks = self.callbacks_handler.subscribers
        for hook in hooks["on_batch_begin"]:
            hook()
        if not self.should_execute_optimizer_update():
            with self.strategy.no_sync():  # an accumulation micro-batch: DDP skips the all-reduce
                loss_batch = self._forward_backward(batch_data)
        else:
            loss_batch = self._forward_backward(batch_data)
            for optimizer_idx in self._optimizer_indices:
                for hook in hooks["on_after_gradient_update"]:
                    hook(optimizer_idx)
                self._optimizer_step(optimizer_idx)
                self._optimizer_zero_grad(optimizer_idx)
            if self.amp_handler.scaler is not None:  # a loss scale to update (CUDA AMP)
                self.amp_handler.update()
            self.num_optimizer_steps += 1
            self.weights_version += 1
            for hook in hooks["on_after_optimizer_step"]:
                hook()
        if hooks["on_batch_end"]:
            self._checkpoint_phase = "batch_end"
            for hook in hooks["on_batch_end"]:
                hook()
            self._checkpoint_phase = None
        self.iteration += 1
        self.total_iteration_idx += 1
        return loss_batch

    def _forward_backward(self, batch_data):
        """Loss of the batch (kept for ``accumulated_loss``), scaled to its window, back-propagated."""
        if self._check_empty_batches:  # only for loaders that can yield them (custom sampler / collate)
            validation.require_batch_samples(batch_data, "train_loader", self.iteration, self.epoch)
        loss_batch = self._calculate_batch_loss(batch_data)
        self.loss_batch_accum.append(loss_batch.detach())
        if self.grad_accumulation > 1:
            loss_batch = loss_batch / self._window_size()
        for optimizer_idx in self._optimizer_indices:
            self._backward_pass(loss_batch, optimizer_idx)
        return loss_batch

    # ------------------------------------------------------------------ overridable step methods
    def _calculate_batch_loss(self, batch_data):
        """Run the batch through the model (under autocast) and return its loss.

        Args:
            batch_data: one batch from the train loader.

        Returns:
            The batch loss: a tensor or a ``MultiLoss``.
        """
        try:  # free unless it raises (Python 3.11+)
            if not self.amp_handler.enabled:  # no context manager at all on the plain path
                return self.feed.get_loss(batch_data, self.criterion, self.device)
            with self.amp_handler.autocast():
                return self.feed.get_loss(batch_data, self.criterion, self.device)
        except Exception as error:
            validation.explain_batch_error(self.feed_def, batch_data, error)
            raise

    def _backward_pass(self, loss_batch, optimizer_idx: int) -> None:
        """Back-propagate the loss (the losses mapped to optimizer ``optimizer_idx``).

        Args:
            loss_batch: the batch loss: a tensor or a ``MultiLoss``.
            optimizer_idx: index of the optimizer whose losses to back-propagate.
        """
        if isinstance(loss_batch, MultiLoss):
            if type(loss_batch).backward is not MultiLoss.backward:  # the user's override
                loss_batch.backward(optimizer_idx, self.iteration, self.amp_handler.grad_scaler)
                return
            if optimizer_idx == 0:
                loss_batch.check_optimizers(len(self.optimizers))
            loss_batch.backward_with(optimizer_idx, self.amp_handler.backward)
        elif optimizer_idx == 0:
            self.amp_handler.backward(loss_batch)

    def _optimizer_step(self, optimizer_idx: int) -> None:
        """Step the optimizer ``optimizer_idx`` (through the GradScaler under AMP).

        A ``MultiOptimizer`` subclass overriding ``step`` gets the call instead:
        ``step(optimizer_idx, iteration, amp_grad_scaler)``.
        """
        if self._user_optimizer_step:
            self.optimizer.step(optimizer_idx, self.iteration, self.amp_handler.grad_scaler)
        else:
            self.amp_handler.step(self.optimizers[optimizer_idx])

    def _optimizer_zero_grad(self, optimizer_idx: int) -> None:
        """Zero (set to None) the gradients of the optimizer ``optimizer_idx``.

        A ``MultiOptimizer`` subclass overriding ``zero_grad`` gets the call instead:
        ``zero_grad(optimizer_idx, iteration)``.
        """
        if self._user_zero_grad:
            self.optimizer.zero_grad(optimizer_idx, self.iteration)
        else:
            self.optimizers[optimizer_idx].zero_grad()  # set_to_none (torch's default)

    def should_execute_optimizer_update(self) -> bool:
        """Whether the optimizer steps after the current batch.

        True after every ``grad_accumulation`` batches and on the last batch of the epoch (or
        of training, when ``num_iterations`` ends it mid-epoch).
        """
        return (self.iteration + 1) % self.grad_accumulation == 0 or self.iteration + 1 >= self._epoch_len

    def _window_size(self) -> int:
        """Number of batches in the accumulation window of the current batch."""
        window_start = self.iteration - self.iteration % self.grad_accumulation
        return min(self.grad_accumulation, self._epoch_len - window_start)

    # ------------------------------------------------------------------ epoch bookkeeping
    def _prepare_training(self, num_epochs, num_iterations, callbacks, grad_accumulation) -> None:
        self.num_epochs, self.num_iterations = num_epochs, num_iterations
        self.grad_accumulation = grad_accumulation
        self.early_stop = False
        self._stop_request, self._stop_control = None, None  # set by a StopOnSignal callback
        self.module.train()
        if self.torch_compile:
            self.feed = self.strategy.compile_model(self.feed_def, self.torch_compile)
        self._check_empty_batches = validation.may_yield_empty_batches(self.train_loader)
        self.callbacks_handler.reset()
        self.callbacks_handler.register_callbacks(with_default_stop(callbacks, self.callbacks_handler),
                                                  rank=self.strategy.rank)
        unclaimed = []
        if self._pending_callback_state is not None:
            unclaimed = self.callbacks_handler.load_state_dict(self._pending_callback_state)
            self._pending_callback_state = None
        checkpointing.apply_pending_scheduler_states(self)  # of an aitoolbox 1.8 checkpoint
        self.strategy.setup_run(self)
        if unclaimed or getattr(self, "_resumed_run_shape", None):
            checkpointing.warn_inexact_resume(self, unclaimed)
        if self.print_callbacks and self.is_main_process():
            self.callbacks_handler.print_registered_callbacks()
        for optimizer in self.optimizers:
            optimizer.zero_grad()  # set_to_none, torch's default; also a duck-typed optimizer's signature
        checkpointing.restore_pending_grads(self)
        self._choose_batch_path()

    def _choose_batch_path(self) -> None:
        """Once per fit: the plain per-batch path, or the stream / weighted one when needed."""
        self.__dict__.pop("_forward_backward", None)  # the class's plain method
        self._stream = None if has_length(self.train_loader) else StreamState(self.train_loader)
        if self._stream is not None:  # the position of a loaded checkpoint, for a stateful stream
            self._stream.pending, self._pending_stream_position = self._pending_stream_position, None
        self._window = None
        if self._stream is not None or self.loss_weighting != "batches":
            self._window = weighting.WindowWeighting(self, self.loss_weighting)
            self._forward_backward = functools.partial(self._window.forward_backward, self)

    def _num_loader_batches(self) -> float:
        """``len(train_loader)``; ``math.inf`` for a stream (a loader without a length)."""
        return math.inf if self._stream is not None else len(self.train_loader)

    def _loader_ran_out(self) -> bool:
        """Whether the epoch's batches ended because the loader had no more (not num_iterations)."""
        if self._stream is not None:
            return self._stream.exhausted
        return self._epoch_len == len(self.train_loader)

    def _training_done(self) -> bool:
        if self.num_iterations:
            return self.total_iteration_idx >= self.num_iterations
        return self.epoch >= self.num_epochs

    def _open_epoch(self):
        """Start (or re-enter, after a resume) the current epoch; returns the batch iterator."""
        self.module.train()
        self.strategy.set_epoch(self.train_loader, self.epoch)
        self._epoch_len = self._batches_this_epoch()
        self._epoch_start_time = time.perf_counter()
        if self.iteration == 0:
            self.epoch_start_rng = rng_state.rng_snapshot(self.train_loader)
            self.loss_batch_accum, self.loss_weight_accum = [], []
            self.callbacks_handler.execute("on_epoch_begin")
            return self._epoch_batches(iter(self.train_loader))
        resumed = self._stream.resume(self) if self._stream is not None else None
        if resumed is not None:  # a stateful stream, put back at the checkpoint's position
            return self._epoch_batches(resumed)
        # Mid-epoch: replay the epoch's start so that the remaining batches come in the same order.
        current_rng = rng_state.rng_snapshot(self.train_loader)
        rng_state.restore_rng(self.train_loader, self.epoch_start_rng)
        batches = iter(self.train_loader)
        for _ in itertools.islice(batches, self.iteration):
            pass
        rng_state.restore_rng(self.train_loader, current_rng)
        return self._epoch_batches(batches)

    def _epoch_batches(self, batches):
        """The batches left in this epoch.

        A whole epoch runs the loader to exhaustion, as a plain ``for`` loop does: the last,
        empty ``next()`` draws from a seeded ``RandomSampler``'s generator, and skipping it would
        shuffle the next epoch differently. An epoch cut short by ``num_iterations`` stops without
        asking for one batch more. A stream (no length) is read one batch ahead (see ``streams``).
        """
        if self._stream is not None:
            return self._stream.batches(self, batches, self._epoch_len - self.iteration)
        if self._epoch_len < len(self.train_loader):
            return itertools.islice(batches, self._epoch_len - self.iteration)
        return batches

    def _batches_this_epoch(self) -> float:
        epoch_len = self._num_loader_batches()
        if self.num_iterations:
            remaining = self.num_iterations - self.total_iteration_idx
            epoch_len = min(epoch_len, self.iteration + remaining)
        return epoch_len

    def _close_epoch(self, loader_exhausted: bool = False) -> None:
        epoch_complete = self.iteration >= self._num_loader_batches() or self.early_stop or loader_exhausted
        self._drop_provisional_history()
        self._epoch_close_marks = self._history_lengths()
        if self.loss_batch_accum:
            self.insert_metric_result_into_history(
                "accumulated_loss", self.convert_loss_to_float_dict_format(self._mean_train_loss()))
        if self._auto_eval_enabled(epoch=self.epoch):
            self.auto_execute_end_of_epoch()
        self._checkpoint_phase = "epoch_end" if epoch_complete else None
        self.callbacks_handler.execute("on_epoch_end")
        self._checkpoint_phase = None
        if self._unverified_metrics:  # watched metrics that only the first epoch could confirm
            if self.is_main_process():
                warn_missing_metrics(self.train_history, self._unverified_metrics)
            self._unverified_metrics = []
        if not epoch_complete:
            self._provisional_history = (self.epoch, self._epoch_close_marks, self._history_lengths())
        self._log_epoch_summary(epoch_complete)
        self.message_service.end_of_epoch_trigger()
        self.early_stop = self.strategy.any_rank(self.early_stop)
        if epoch_complete:
            self.epoch += 1
            self.iteration = 0

    def _history_lengths(self) -> Dict[str, int]:
        return {name: len(values) for name, values in self.train_history.items()}

    def _drop_provisional_history(self) -> None:
        """Remove what a ``num_iterations`` stop recorded for the epoch that is now closing again."""
        if self._provisional_history is None:
            return
        epoch, before, after = self._provisional_history
        self._provisional_history = None
        if epoch != self.epoch:
            return
        for name, values in self.train_history.items():
            start, end = before.get(name, 0), after.get(name, 0)
            if end > start:
                del values[start:end]

    def _log_epoch_summary(self, epoch_complete: bool) -> None:
        """One INFO line with what this epoch's end recorded (see the class docstring)."""
        if self.quiet or not self.is_main_process() or not self.logger.isEnabledFor(logging.INFO):
            return
        recorded = {name: values[-1] for name, values in self.train_history.items()
                    if len(values) > self._epoch_close_marks.get(name, 0)}
        order = [name for name in _EPOCH_LINE_LABELS if name in recorded]
        order += [name for name in recorded if name not in _EPOCH_LINE_LABELS]
        parts = [f"{_EPOCH_LINE_LABELS.get(name, name)} {format_value(recorded[name])}" for name in order]
        total = f"/{self.num_epochs}" if self.num_epochs else ""
        of = "" if self._stream is not None else f"/{len(self.train_loader)}"
        where = "" if epoch_complete else f" (stopped after batch {self.iteration}{of})"
        took = format_duration(time.perf_counter() - self._epoch_start_time)
        self.logger.info(f"Epoch {self.epoch + 1}{total}{where}: {', '.join(parts) or 'nothing recorded'} "
                         f"({took})")

    def _mean_train_loss(self):
        if self.loss_weight_accum and len(self.loss_weight_accum) == len(self.loss_batch_accum):
            # 'samples' / 'tokens': the weighted mean over the epoch's batches on all ranks
            loss_sum, weight = weighting.weighted_mean(self.loss_batch_accum, self.loss_weight_accum)
            return self.strategy.mean_over_ranks(loss_sum) / self.strategy.mean_over_ranks(weight)
        if isinstance(self.loss_batch_accum[0], torch.Tensor):  # floats the progress display converted already
            mean = self._loss_values.mean(self.loss_batch_accum)
            return self.strategy.mean_over_ranks(
                torch.tensor(mean, dtype=torch.float64, device=self.loss_batch_accum[0].device))
        return self.strategy.mean_over_ranks(self.parse_loss(self.loss_batch_accum))

    def _auto_eval_enabled(self, epoch: Optional[int] = None) -> bool:
        if isinstance(self.end_auto_eval, bool) or epoch is None:
            return bool(self.end_auto_eval)
        return (epoch + 1) % self.end_auto_eval == 0

    def _open_progress(self):
        """The epoch's progress display, or None (``show_progress=False``, ``quiet``, other ranks)."""
        if not self.show_progress or self.quiet or not self.is_main_process():
            return None
        from aitoolbox.torchtrain.callbacks.progress import open_epoch_progress
        return open_epoch_progress(self, self.progress_stream)

    # ------------------------------------------------------------------ end-of-epoch evaluation
    def auto_execute_end_of_epoch(self) -> None:
        """Evaluate the train (and validation) loss into the history: ``loss``, ``val_loss``."""
        epoch = f"Epoch {self.epoch + 1}"
        self._print_save_loss(self.evaluate_loss_on_train_set(), "loss", f"{epoch} train-set (eval mode)")
        if self.validation_loader is not None:
            self._print_save_loss(self.evaluate_loss_on_validation_set(), "val_loss", f"{epoch} validation")

    def auto_execute_end_of_training(self) -> None:
        """Evaluate the test loss into the history as ``train_end_test_loss`` (and log it)."""
        if self.test_loader is not None:
            self._print_save_loss(self.evaluate_loss_on_test_set(), "train_end_test_loss",
                                  "End of training test")
            if not self.quiet and self.is_main_process():
                value = self.train_history.get_last("train_end_test_loss")
                self.logger.info(f"End of training: test loss {format_value(value)}")

    # ------------------------------------------------------------------ misc public API
    def get_schedulers(self) -> list:
        """The registered scheduler callbacks."""
        from aitoolbox.torchtrain.schedulers.basic import AbstractScheduler
        return [cb for cb in self.callbacks_handler.registered_callbacks if isinstance(cb, AbstractScheduler)]

    def get_num_training_steps(self) -> int:
        """Real optimizer updates over the whole run (accounts for gradient accumulation).

        Raises:
            ValueError: the train loader has no length and the number is not known (it is with
                ``fit(num_iterations=n)`` and ``grad_accumulation=1``: ``n``).
        """
        if not has_length(self.train_loader):
            if self.num_iterations and self.grad_accumulation == 1:
                return self.num_iterations
            raise ValueError("The number of optimizer steps is unknown: train_loader has no length (a stream), "
                             "so the steps of an epoch are known only at its end. Give it to what needs it, "
                             "e.g. a scheduler's num_training_steps=... (CosineLrScheduler also "
                             "num_update_steps_per_epoch=...), or train with fit(num_iterations=n) and "
                             "grad_accumulation=1 (n steps).")
        steps_per_epoch = math.ceil(len(self.train_loader) / self.grad_accumulation)
        if not self.num_iterations:
            return self.num_epochs * steps_per_epoch
        full_epochs, rest = divmod(self.num_iterations, len(self.train_loader))
        return full_epochs * steps_per_epoch + math.ceil(rest / self.grad_accumulation)

    def is_main_process(self) -> bool:
        """True in the main process (rank 0 under DDP; always on one device)."""
        return self.strategy.is_main_process()

    @property
    def callbacks(self) -> list:
        """The registered callbacks, in execution order."""
        return self.callbacks_handler.registered_callbacks

    @property
    def ddp_training_mode(self) -> bool:
        """Whether this process is one rank of a multi-process (DDP or FSDP) run."""
        return self.strategy.multi_process and self.strategy.world_size > 1

    @property
    def ddp_rank(self) -> Optional[int]:
        """This process's global rank in a DDP run, else None."""
        return self.strategy.rank if self.ddp_training_mode else None

    @property
    def experiment_timestamp(self) -> str:
        """When the TrainLoop was built, as ``YYYY-MM-DD_HH-MM-SS`` (the experiment folder's suffix)."""
        return self._experiment_timestamp

    @experiment_timestamp.setter
    def experiment_timestamp(self, value: str) -> None:
        self._experiment_timestamp = value

    @property
    def amp_scaler(self):
        """The ``torch.amp.GradScaler`` in use, or None."""
        return self.amp_handler.scaler

    @property
    def optimizer_step_skipped(self) -> bool:
        """Whether AMP's GradScaler skipped the last optimizer step (inf/NaN gradients)."""
        return self.amp_handler.step_skipped

    def unwrapped_model(self) -> torch.nn.Module:
        """The user's ``nn.Module`` (inside ``ModelWrap``; never a DP / DDP wrapper)."""
        return self.module

    # ------------------------------------------------------------------ state & checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue this run exactly; see ``components/checkpointing.py``."""
        return checkpointing.loop_state_dict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`; the next ``fit`` continues from it."""
        checkpointing.load_loop_state_dict(self, state)

    def save_checkpoint(self, path: str) -> str:
        """Write :meth:`state_dict` atomically to ``path`` (local or ``s3://`` URI); returns it."""
        return checkpointing.save_checkpoint(self, path)

    def load_checkpoint(self, path: str) -> "TrainLoop":
        """Load a checkpoint written by :meth:`save_checkpoint` (local path or ``s3://`` URI).

        A local folder - an experiment folder or its ``checkpoint_model/`` - loads its newest
        complete, exact checkpoint (verified from the files; see ``docs/fault_tolerance.md``).
        ``~`` is expanded.

        Returns:
            self, so that ``loop.load_checkpoint(p).fit(num_epochs=n)`` continues the run.
        """
        checkpointing.load_checkpoint(self, path)
        return self

    # ------------------------------------------------------------------ seed-API compatibility
    def _train_dp(self, num_epochs, num_iterations, callbacks=None, grad_accumulation=1, dp_model_args=None):
        """Train with DataParallel (``gpu_mode='dp'``); same as ``fit(..., dp_model_args=...)``."""
        return self.fit(num_epochs, num_iterations, callbacks, grad_accumulation, dp_model_args=dp_model_args)

    def _train_ddp(self, num_epochs, num_iterations, callbacks=None, grad_accumulation=1, ddp_model_args=None,
                   in_process_data_load=None, num_nodes=1, node_rank=0, num_gpus=None, backend="nccl",
                   init_method="env://", on_gpu=True):
        """Train with DistributedDataParallel (``gpu_mode='ddp'``); same as ``fit(..., **ddp_kwargs)``.

        ``num_gpus=None`` is the number of visible CUDA devices (processes per node).
        """
        return self.fit(num_epochs, num_iterations, callbacks, grad_accumulation, ddp_model_args=ddp_model_args,
                        in_process_data_load=in_process_data_load, num_nodes=num_nodes, node_rank=node_rank,
                        num_gpus=num_gpus, backend=backend, init_method=init_method, on_gpu=on_gpu)

    def _spawn_fit(self, gpu, ddp_args, num_epochs, num_iterations, callbacks, grad_accumulation,
                   in_process_data_load):
        """Set up and train one rank in a process started by ``gpu_mode='ddp'`` (``gpu``: local rank)."""
        train_args = dict(num_epochs=num_epochs, num_iterations=num_iterations, callbacks=list(callbacks or []),
                          grad_accumulation=grad_accumulation)
        return self.strategy.spawn_fit(self, gpu, ddp_args, train_args, list(in_process_data_load or []))


def _length_or_zero(loader) -> int:
    """``len(loader)``, or 0 for None / a loader without a length (e.g. over an IterableDataset)."""
    try:
        return len(loader)
    except TypeError:
        return 0


def _overrides(obj, base: type, method: str) -> bool:
    """Whether ``obj`` is an instance of a subclass of ``base`` that overrides ``method``."""
    return isinstance(obj, base) and getattr(type(obj), method) is not getattr(base, method)

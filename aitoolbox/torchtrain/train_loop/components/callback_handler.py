"""Callback registration and dispatch: the one ordered list of hook names.

A callback subscribes to exactly the hooks that its class overrides, so dispatching a hook that no
callback implements costs one empty loop. Callbacks run in ascending ``execution_order``; ties keep
the registration order.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Dict, List, Optional, Sequence

logger = logging.getLogger("aitoolbox")

#: Every hook, in the order the TrainLoop calls them. The single source of truth for hook names.
HOOKS = (
    "on_train_loop_registration",
    "on_multiprocess_start",
    "on_train_begin",
    "on_epoch_begin",
    "on_batch_begin",
    "on_after_gradient_update",
    "on_after_optimizer_step",
    "on_batch_end",
    "on_after_batch_prediction",
    "on_epoch_end",
    "on_train_end",
    "on_train_crash",
)


def _callbacks_at(hook: str) -> property:
    """A read-only ``CallbacksHandler`` property: the registered callbacks implementing ``hook``."""
    def callbacks_at(self) -> List:
        return [cb for cb in self.registered_callbacks if hook in cb.implemented_hooks()]
    return property(callbacks_at, doc=f"The registered callbacks implementing ``{hook}``, in execution "
                                      "order (a read-only copy of aitoolbox 1.8's list).")


class CallbacksHandler:
    """Registers callbacks with a TrainLoop and calls their hooks in order.

    Args:
        train_loop_obj: the TrainLoop the callbacks belong to.
    """

    def __init__(self, train_loop_obj):
        self.train_loop_obj = train_loop_obj
        self.registered_callbacks: List = []
        #: hook name -> the subscribed callables, in execution order (read-only for others: the
        #: TrainLoop's batch loop iterates these lists directly)
        self.subscribers: Dict[str, List] = {hook: [] for hook in HOOKS}

        #: callbacks given with ``cache_callbacks=True``: registered at the next registration
        self.callbacks_cache: List = []

    def reset(self) -> None:
        """Forget every registered callback (each ``fit`` registers its own); the cache stays."""
        self.registered_callbacks = []
        self.subscribers = {hook: [] for hook in HOOKS}

    def register_callbacks(self, callbacks: Optional[Sequence], rank: Optional[int] = None,
                           cache_callbacks: bool = False, print_callbacks: bool = False) -> None:
        """Register callbacks, call their ``on_train_loop_registration``, rebuild the hook lists.

        Args:
            callbacks: ``AbstractCallback`` instances (None: none).
            rank: this process's global rank; a callback whose ``device_idx_execution`` is set
                runs only on that rank. None: the TrainLoop's strategy's rank.
            cache_callbacks: only remember the callbacks; they are registered with the next
                registration without this flag (e.g. at the start of ``fit``).
            print_callbacks: log the registered callbacks afterwards.

        Raises:
            TypeError: a callback is not an ``AbstractCallback``.
            ValueError: a callback instance given twice (or already registered), or a
                ``device_idx_execution`` naming a process that does not exist.
        """
        if cache_callbacks:
            self.callbacks_cache += list(callbacks or [])
            return
        callbacks, self.callbacks_cache = self.callbacks_cache + list(callbacks or []), []
        self.enforce_callbacks_quality(callbacks)
        for cb in callbacks:
            if self.should_enable_callback(cb, rank):
                self.registered_callbacks.append(cb.register_train_loop_object(self.train_loop_obj))
        self.registered_callbacks.sort(key=lambda c: c.execution_order)
        if print_callbacks:
            self.print_registered_callbacks()
        self._subscribe_registered()

    def _check_device_idx_execution(self, callbacks: Sequence) -> None:
        """A callback pinned to a rank that does not exist would silently never run."""
        loop = self.train_loop_obj
        strategy = getattr(loop, "strategy", None)
        world_size = getattr(strategy, "world_size", 1)
        if strategy is None or (getattr(strategy, "multi_process", False) and world_size == 1):
            return  # a DDP / FSDP loop outside its processes: the number of ranks is not known yet
        for cb in callbacks:
            idx = cb.device_idx_execution
            if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < world_size):
                raise ValueError(f"{cb.callback_name} ({type(cb).__name__}): device_idx_execution={idx!r}, but "
                                 f"this run has {world_size} process(es) (ranks 0..{world_size - 1}), so the "
                                 "callback would never run. Pass an existing rank, or None to run everywhere.")

    def _hook_function(self, cb, hook: str) -> Callable:
        """``cb``'s bound hook; in a multi-process run a rank-pinned callback's hook runs in the
        strategy's ``solo()`` context, so that it never enters a collective without the other ranks."""
        method = getattr(cb, hook)
        strategy = getattr(self.train_loop_obj, "strategy", None)
        if cb.device_idx_execution is None or strategy is None or strategy.world_size == 1:
            return method
        return functools.partial(_run_solo, strategy, method)

    def execute(self, hook: str, *args) -> None:
        """Call ``hook(*args)`` on every subscribed callback, in order."""
        for hook_function in self.subscribers[hook]:
            hook_function(*args)

    # aitoolbox 1.8's names of the dispatch calls
    def execute_epoch_begin(self) -> None:
        """Call ``on_epoch_begin`` on the subscribed callbacks."""
        self.execute("on_epoch_begin")

    def execute_epoch_end(self) -> None:
        """Call ``on_epoch_end`` on the subscribed callbacks."""
        self.execute("on_epoch_end")

    def execute_train_begin(self) -> None:
        """Call ``on_train_begin`` on the subscribed callbacks."""
        self.execute("on_train_begin")

    def execute_train_end(self) -> None:
        """Call ``on_train_end`` on the subscribed callbacks."""
        self.execute("on_train_end")

    def execute_batch_begin(self) -> None:
        """Call ``on_batch_begin`` on the subscribed callbacks."""
        self.execute("on_batch_begin")

    def execute_batch_end(self) -> None:
        """Call ``on_batch_end`` on the subscribed callbacks."""
        self.execute("on_batch_end")

    def execute_gradient_update(self, optimizer_idx: int = 0) -> None:
        """Call ``on_after_gradient_update(optimizer_idx)`` on the subscribed callbacks."""
        self.execute("on_after_gradient_update", optimizer_idx)

    def execute_optimizer_step(self) -> None:
        """Call ``on_after_optimizer_step`` on the subscribed callbacks."""
        self.execute("on_after_optimizer_step")

    def execute_multiprocess_start(self) -> None:
        """Call ``on_multiprocess_start`` on the subscribed callbacks."""
        self.execute("on_multiprocess_start")

    def execute_after_batch_prediction(self, y_pred_batch, y_test_batch, metadata_batch, dataset_info) -> None:
        """Call ``on_after_batch_prediction`` on the subscribed callbacks."""
        self.execute("on_after_batch_prediction", y_pred_batch, y_test_batch, metadata_batch, dataset_info)

    def has(self, hook: str) -> bool:
        """Whether any registered callback implements ``hook``."""
        return bool(self.subscribers[hook])

    def print_registered_callbacks(self) -> None:
        """Log the registered callbacks and the hooks each one implements."""
        lines = ["Registered callbacks (in execution order):"]
        for cb in self.registered_callbacks:
            lines.append(f"  [{cb.execution_order}] {cb.callback_name}: "
                         f"{', '.join(h for h in HOOKS if h in cb.implemented_hooks())}")
        logger.info("\n".join(lines))

    def print_registered_callback_names(self) -> None:
        """Same as :meth:`print_registered_callbacks` (aitoolbox 1.8's name)."""
        self.print_registered_callbacks()

    def __str__(self) -> str:
        lines = ["CALLBACKS"]
        for hook in HOOKS:
            lines.append(f"At {hook}:")
            lines += [f"\t{cb.callback_name}: {type(cb)}, execution_order: {cb.execution_order}"
                      for cb in self.registered_callbacks if hook in cb.implemented_hooks()]
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.registered_callbacks)

    def __iadd__(self, callbacks: Sequence) -> "CallbacksHandler":
        """Register ``callbacks`` (a list)."""
        self.register_callbacks(callbacks)
        return self

    __add__ = __iadd__

    def __contains__(self, item) -> bool:
        """A registered callback with this name (str), of this class (type), or this callback."""
        if isinstance(item, str):
            return any(cb.callback_name == item for cb in self.registered_callbacks)
        if isinstance(item, type):
            return any(type(cb) is item for cb in self.registered_callbacks)
        return any(cb is item for cb in self.registered_callbacks)

    # ------------------------------------------------------------------ aitoolbox 1.8's surface
    cbs_on_epoch_begin = _callbacks_at("on_epoch_begin")
    cbs_on_epoch_end = _callbacks_at("on_epoch_end")
    cbs_on_train_begin = _callbacks_at("on_train_begin")
    cbs_on_train_end = _callbacks_at("on_train_end")
    cbs_on_batch_begin = _callbacks_at("on_batch_begin")
    cbs_on_batch_end = _callbacks_at("on_batch_end")
    cbs_on_after_gradient_update = _callbacks_at("on_after_gradient_update")
    cbs_on_after_optimizer_step = _callbacks_at("on_after_optimizer_step")
    cbs_on_multiprocess_start = _callbacks_at("on_multiprocess_start")
    cbs_on_after_batch_prediction = _callbacks_at("on_after_batch_prediction")

    @property
    def registered_cbs(self) -> List[List]:
        """The ``cbs_on_*`` lists in aitoolbox 1.8's order (epoch begin / end, train begin / end, batch
        begin / end, after gradient update, after optimizer step, multiprocess start, after batch
        prediction)."""
        return [self.cbs_on_epoch_begin, self.cbs_on_epoch_end, self.cbs_on_train_begin, self.cbs_on_train_end,
                self.cbs_on_batch_begin, self.cbs_on_batch_end, self.cbs_on_after_gradient_update,
                self.cbs_on_after_optimizer_step, self.cbs_on_multiprocess_start,
                self.cbs_on_after_batch_prediction]

    def should_enable_callback(self, callback, rank: Optional[int] = None) -> bool:
        """Whether ``callback`` runs in this process: its ``device_idx_execution`` is None or this
        process's rank (``rank``; None: the TrainLoop's strategy's, 0 in a single-process run)."""
        if rank is None:
            rank = getattr(getattr(self.train_loop_obj, "strategy", None), "rank", 0)
        return callback.device_idx_execution is None or callback.device_idx_execution == rank

    def mp_filter_callbacks(self) -> None:
        """Drop the registered callbacks that :meth:`should_enable_callback` rejects in this process."""
        self.registered_callbacks = [cb for cb in self.registered_callbacks if self.should_enable_callback(cb)]
        self._subscribe_registered()

    def split_on_execution_position(self, callbacks: Optional[Sequence], register_train_loop: bool = False) -> None:
        """Subscribe ``callbacks`` to the hooks they implement, without the rest of registration.

        Unlike :meth:`register_callbacks` the cache is left alone and ``on_train_loop_registration``
        is called only with ``register_train_loop``. Callbacks that :meth:`should_enable_callback`
        rejects are skipped.

        Args:
            callbacks: ``AbstractCallback`` instances (None: none).
            register_train_loop: also give each callback the TrainLoop (``register_train_loop_object``).
        """
        self.enforce_callbacks_quality(callbacks or [])
        for cb in callbacks or []:
            if self.should_enable_callback(cb):
                self.registered_callbacks.append(
                    cb.register_train_loop_object(self.train_loop_obj) if register_train_loop else cb)
        self.registered_callbacks.sort(key=lambda c: c.execution_order)
        self._subscribe_registered()

    def _subscribe_registered(self) -> None:
        """Rebuild the hook lists from the registered callbacks."""
        self.subscribers = {hook: [self._hook_function(cb, hook) for cb in self.registered_callbacks
                                   if hook in cb.implemented_hooks()] for hook in HOOKS}

    def enforce_callbacks_quality(self, callbacks: Sequence) -> None:
        """Check callbacks before registration.

        Raises:
            TypeError: a callback is not an ``AbstractCallback``.
            ValueError: a callback instance given twice (or already registered), or a
                ``device_idx_execution`` naming a process that does not exist.
        """
        from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

        for idx, cb in enumerate(callbacks):
            if not isinstance(cb, AbstractCallback):
                raise TypeError(f"callbacks[{idx}] is a {type(cb).__name__}; every callback must be "
                                "an AbstractCallback instance.")
        check_no_duplicates(self.registered_callbacks + list(callbacks))
        self._check_device_idx_execution(callbacks)

    def state_dict(self) -> Dict[str, dict]:
        """State of every stateful callback, keyed by name and occurrence."""
        return {key: cb.state_dict() for key, cb in self._keyed_callbacks().items()
                if cb.state_dict() is not None}

    def load_state_dict(self, state: Dict[str, dict]) -> List[str]:
        """Give each registered callback its saved state; returns the keys nobody claimed."""
        keyed = self._keyed_callbacks()
        for key, cb_state in state.items():
            if key in keyed:
                keyed[key].load_state_dict(cb_state)
        return [key for key in state if key not in keyed]

    def _keyed_callbacks(self) -> Dict[str, object]:
        keyed, seen = {}, {}
        for cb in self.registered_callbacks:
            name = f"{type(cb).__qualname__}:{cb.callback_name}"
            seen[name] = seen.get(name, -1) + 1
            keyed[f"{name}:{seen[name]}"] = cb
        return keyed


def check_no_duplicates(callbacks: Sequence) -> None:
    """Raise when one callback instance appears twice: its hooks would run twice per event (a
    scheduler would step twice per update).

    Raises:
        ValueError: naming the callback.
    """
    from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

    seen = set()
    for cb in callbacks:
        if not isinstance(cb, AbstractCallback):
            continue
        if id(cb) in seen:
            raise ValueError(f"The callback {cb.callback_name} ({type(cb).__name__}) is registered twice (the "
                             "same instance): its hooks would run twice per event, e.g. a scheduler stepping "
                             "twice per update. Pass each callback once; create a second instance if you "
                             "really want it twice.")
        seen.add(id(cb))


def _run_solo(strategy, method: Callable, *args):
    with strategy.solo():
        return method(*args)

"""``components.checkpointing`` still offers the names that moved to its neighbour modules: the same
objects (re-exported, not copies), so ``from ...checkpointing import X`` keeps working."""
import importlib

import pytest

from aitoolbox.torchtrain.train_loop.components import checkpointing

_MOVED = {
    "checkpoint_files": ["is_sharded_checkpoint_folder", "resolve_checkpoint_path", "read_checkpoint",
                         "safe_torch_load", "verify_checkpoint_file"],
    "original_checkpoint": ["ORIGINAL_REQUIRED_KEYS", "is_original_checkpoint", "unknown_checkpoint_message",
                            "strip_data_parallel_prefix", "load_original_state_dict", "reset_run_state",
                            "set_original_position", "PendingSchedulerStates", "load_original_scheduler_state",
                            "apply_pending_scheduler_states"],
    "reproducibility": ["rank_stream_seed", "seed_rank_streams"],
    "rng_state": ["rng_snapshot", "restore_rng"],
}


@pytest.mark.parametrize("module_name, name", [(m, n) for m, names in _MOVED.items() for n in names])
def test_moved_names_are_reexported_from_checkpointing(module_name, name):
    home = importlib.import_module(f"aitoolbox.torchtrain.train_loop.components.{module_name}")
    assert getattr(checkpointing, name) is getattr(home, name)
    if callable(getattr(home, name)):
        assert getattr(home, name).__module__ == home.__name__  # defined there, once

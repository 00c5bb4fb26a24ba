"""The benchmark scenarios: each module holds the arms (``arm_<name>(params) -> dict``) of one workload."""

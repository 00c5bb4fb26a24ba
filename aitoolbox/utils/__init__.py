"""Small utilities shared across the package (``dict_util``, ``file_system``, ``util``, ``io`` ...)."""

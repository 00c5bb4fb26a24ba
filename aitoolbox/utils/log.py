"""The ``aitoolbox`` logger: reports go through ``logging``, by default to stderr at INFO."""
from __future__ import annotations

import logging

LOGGER_NAME = "aitoolbox"


def get_logger() -> logging.Logger:
    """The package logger; given a stderr handler at INFO when nothing is configured.

    An application that configures logging itself (a root handler, or a handler or level on the
    ``aitoolbox`` logger) keeps full control: nothing is added then.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers and not logging.getLogger().handlers and logger.level == logging.NOTSET:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger

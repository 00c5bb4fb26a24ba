"""The ``aitoolbox`` logger: reports go through ``logging``, by default to stderr at INFO.

The library logs through ``logging.getLogger("aitoolbox")`` (and its children). When the
application has configured nothing, the first :func:`get_logger` gives that logger a stderr
handler (message only) and the level INFO, so that a script shows the per-epoch lines. Records
always propagate: once the application configures the root logger (``logging.basicConfig``,
pytest's ``caplog``, ...) the default handler steps aside and the records go to the
application's handlers only, never twice. The usual controls work at any time:

* ``logging.getLogger("aitoolbox").setLevel(logging.WARNING)``: no INFO lines;
* ``TrainLoop(..., quiet=True)``: no progress display and no per-epoch lines from that loop.

Nothing is ever added to the root logger.
"""
from __future__ import annotations

import logging

LOGGER_NAME = "aitoolbox"


class DefaultStderrHandler(logging.StreamHandler):
    """stderr, message only, while the root logger has no handler (then the root's handlers show it)."""

    def __init__(self):
        super().__init__()  # sys.stderr, looked up at every emit
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        super().emit(record)

    @property
    def stream(self):
        import sys
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; stderr is always the current one
        pass


def get_logger() -> logging.Logger:
    """The package logger; given :class:`DefaultStderrHandler` at INFO when nothing is configured.

    An application that configures logging itself (a root handler, or a handler or level on the
    ``aitoolbox`` logger) keeps full control: nothing is added then.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers and not logging.getLogger().handlers and logger.level == logging.NOTSET:
        logger.addHandler(DefaultStderrHandler())
        logger.setLevel(logging.INFO)
    return logger

"""Message passing between callbacks (and the TrainLoop) during training.

A message is written under a key with a lifetime; reading returns the list of messages under the
key. Lifetimes: :data:`UNTIL_END_OF_EPOCH` (the default), :data:`UNTIL_READ`, :data:`KEEP_FOREVER`
and :data:`OVERRIDE_KEY` (replace whatever the key holds; kept until end of epoch).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

UNTIL_END_OF_EPOCH = "until_end_of_epoch"
UNTIL_READ = "until_read"
KEEP_FOREVER = "keep_forever"
OVERRIDE_KEY = "override_key"
_SETTINGS = (UNTIL_END_OF_EPOCH, UNTIL_READ, KEEP_FOREVER, OVERRIDE_KEY)


class MessageService:
    """Key -> list of messages, each with its lifetime."""

    def __init__(self):
        self._messages: Dict[str, List[list]] = {}

    def write(self, key: str, value: Any, msg_handling_settings: str = UNTIL_END_OF_EPOCH) -> None:
        """Write a message under ``key``.

        Args:
            key: message key.
            value: any object.
            msg_handling_settings: the message's lifetime (a module constant).

        Raises:
            ValueError: unknown ``msg_handling_settings``.
        """
        if msg_handling_settings not in _SETTINGS:
            raise ValueError(f"msg_handling_settings must be one of {_SETTINGS}, got "
                             f"{msg_handling_settings!r}.")
        if msg_handling_settings == OVERRIDE_KEY:
            self._messages[key] = [[value, UNTIL_END_OF_EPOCH]]
        else:
            self._messages.setdefault(key, []).append([value, msg_handling_settings])

    def read(self, key: str) -> Optional[List[Any]]:
        """Messages under ``key`` (oldest first), or None; UNTIL_READ messages are consumed."""
        if key not in self._messages:
            return None
        msgs = self._messages[key]
        values = [value for value, _ in msgs]
        self._keep(key, lambda setting: setting != UNTIL_READ)
        return values

    def end_of_epoch_trigger(self) -> None:
        """Drop the messages whose lifetime ends with the epoch (called by the TrainLoop)."""
        for key in list(self._messages):
            self._keep(key, lambda setting: setting in (KEEP_FOREVER, UNTIL_READ))

    def _keep(self, key: str, predicate) -> None:
        kept = [m for m in self._messages[key] if predicate(m[1])]
        if kept:
            self._messages[key] = kept
        else:
            del self._messages[key]

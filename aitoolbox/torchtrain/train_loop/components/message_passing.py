"""Message passing between callbacks (and the TrainLoop) during training.

A message is written under a key with a lifetime; reading returns the list of messages under the
key, oldest first. Two spellings of the same service:

* ours: :meth:`MessageService.write` / :meth:`MessageService.read` with the string constants
  :data:`UNTIL_END_OF_EPOCH` (the default), :data:`UNTIL_READ`, :data:`KEEP_FOREVER` and
  :data:`OVERRIDE_KEY` (replace whatever the key holds; kept until end of epoch);
* the original aitoolbox's: :meth:`MessageService.write_message` /
  :meth:`MessageService.read_messages` with :class:`MessageHandling` members (or a list of them:
  ``OVERWRITE`` combined with one lifetime).

Either writer accepts either kind of setting. An ``OVERWRITE`` given without a lifetime keeps the
message until it is overwritten, as in the original.
"""
from __future__ import annotations

from enum import Enum
from typing import Any, Dict, List, Optional, Union

UNTIL_END_OF_EPOCH = "until_end_of_epoch"
UNTIL_READ = "until_read"
KEEP_FOREVER = "keep_forever"
OVERRIDE_KEY = "override_key"
_SETTINGS = (UNTIL_END_OF_EPOCH, UNTIL_READ, KEEP_FOREVER, OVERRIDE_KEY)


class MessageHandling(Enum):
    """Lifetimes of a message (the original aitoolbox's enum)."""

    KEEP_FOREVER = "keep_forever"
    UNTIL_END_OF_EPOCH = "until_end_of_epoch"
    UNTIL_READ = "until_read"
    OVERWRITE = "overwrite"


_FROM_STRING = {
    UNTIL_END_OF_EPOCH: [MessageHandling.UNTIL_END_OF_EPOCH],
    UNTIL_READ: [MessageHandling.UNTIL_READ],
    KEEP_FOREVER: [MessageHandling.KEEP_FOREVER],
    OVERRIDE_KEY: [MessageHandling.UNTIL_END_OF_EPOCH, MessageHandling.OVERWRITE],
}

Settings = Union[str, MessageHandling, List[MessageHandling]]


class Message:
    """One message with its handling settings.

    Args:
        key: message key.
        value: any object.
        msg_handling_settings: a ``MessageHandling`` or a list of them (stored as a list).
    """

    def __init__(self, key: str, value: Any, msg_handling_settings: Union[MessageHandling, List[MessageHandling]]):
        self.key = key
        self.value = value
        self.msg_handling_settings = (list(msg_handling_settings) if isinstance(msg_handling_settings, list)
                                      else [msg_handling_settings])

    def __repr__(self) -> str:
        return f"Message({self.key!r}, {self.value!r}, {self.msg_handling_settings})"


class MessageService:
    """Key -> list of :class:`Message`, in ``message_store``."""

    def __init__(self):
        self.message_store: Dict[str, List[Message]] = {}

    # ------------------------------------------------------------------ ours
    def write(self, key: str, value: Any, msg_handling_settings: Settings = UNTIL_END_OF_EPOCH) -> None:
        """Write a message under ``key``.

        Args:
            key: message key.
            value: any object.
            msg_handling_settings: the message's lifetime: a module constant, a ``MessageHandling``
                or a list of them.

        Raises:
            ValueError: unknown string setting, or two lifetimes combined.
            TypeError: a setting of another type.
        """
        if isinstance(msg_handling_settings, str) and msg_handling_settings not in _SETTINGS:
            raise ValueError(f"msg_handling_settings must be one of {_SETTINGS} or a MessageHandling, got "
                             f"{msg_handling_settings!r}.")
        self.write_message(key, value, msg_handling_settings)

    def read(self, key: str) -> Optional[List[Any]]:
        """Messages under ``key`` (oldest first), or None; UNTIL_READ messages are consumed.

        Unlike :meth:`read_messages`, a key left without messages is dropped (the next read is None).
        """
        values = self.read_messages(key)
        if values is not None and not self.message_store[key]:
            del self.message_store[key]
        return values

    # ------------------------------------------------------------------ the original's API
    def write_message(self, key: str, value: Any,
                      msg_handling_settings: Settings = MessageHandling.UNTIL_END_OF_EPOCH) -> None:
        """Write a message under ``key`` (the original aitoolbox's method).

        Args:
            key: message key.
            value: any object.
            msg_handling_settings: a ``MessageHandling``, a list of them (``OVERWRITE`` plus at most
                one lifetime), or one of this module's string constants.

        Raises:
            TypeError: a setting that is not a ``MessageHandling`` (nor a known string constant).
            ValueError: two lifetimes combined.
        """
        settings = self.validate_msg_handling_settings(msg_handling_settings)
        message = Message(key, value, settings)
        if MessageHandling.OVERWRITE in settings:
            self.message_store[key] = [message]
        else:
            self.message_store.setdefault(key, []).append(message)

    def read_messages(self, key: str) -> Optional[List[Any]]:
        """Messages under ``key`` (oldest first), or None when the key was never written.

        ``UNTIL_READ`` messages are consumed; the key stays (possibly with no messages) until the
        end of the epoch, as in the original aitoolbox.
        """
        if key not in self.message_store:
            return None
        messages = self.message_store[key]
        self.message_store[key] = [m for m in messages if MessageHandling.UNTIL_READ not in m.msg_handling_settings]
        return [m.value for m in messages]

    def end_of_epoch_trigger(self) -> None:
        """Drop the messages whose lifetime ends with the epoch, and empty keys (called by the TrainLoop)."""
        for key in list(self.message_store):
            kept = [m for m in self.message_store[key]
                    if MessageHandling.UNTIL_END_OF_EPOCH not in m.msg_handling_settings]
            if kept:
                self.message_store[key] = kept
            else:
                del self.message_store[key]

    @staticmethod
    def validate_msg_handling_settings(msg_handling_settings: Settings) -> List[MessageHandling]:
        """The settings as a list of ``MessageHandling``.

        Raises:
            TypeError: an element is not a ``MessageHandling`` (nor a known string constant).
            ValueError: more than one setting without ``OVERWRITE`` among them.
        """
        if isinstance(msg_handling_settings, str) and msg_handling_settings in _FROM_STRING:
            return list(_FROM_STRING[msg_handling_settings])
        settings = msg_handling_settings if isinstance(msg_handling_settings, list) else [msg_handling_settings]
        for setting in settings:
            if not isinstance(setting, MessageHandling):
                raise TypeError(f"msg_handling_settings must be a MessageHandling (or a list of them), got "
                                f"{setting!r} of type {type(setting).__name__}.")
        if len(settings) > 1 and MessageHandling.OVERWRITE not in settings:
            raise ValueError(f"msg_handling_settings {settings} combine two lifetimes: only "
                             "MessageHandling.OVERWRITE can be combined with another setting.")
        return list(settings)

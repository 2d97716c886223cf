"""Sending events to browsers through the channel layer.

Services call `broadcast` (on commit); consumers only forward what arrives. Every event is
`{"event": ..., "seq": ..., "data": ...}`: clients load a snapshot over HTTP, then apply
events whose seq is newer, so a lost event never leaves a wrong screen.
"""

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, TypedDict

from channels.layers import BaseChannelLayer, channel_layers

logger = logging.getLogger(__name__)


class RealtimeMessage(TypedDict):
    """An event as the channel layer carries it to a consumer's `realtime_event`."""

    type: str
    event: str
    seq: int
    data: dict[str, Any]  # JSON


@dataclass
class _Sender:
    """A channel layer of this thread's own, on an event loop of its own that stays open.

    channels-redis keeps its connection pools per event loop. `async_to_sync` would run
    each send on a loop that then closes, so a layer used that way needs a new layer and a
    new Redis connection for every event (milliseconds each, and a known channels-redis
    issue when the pools are left on a closed loop). A loop kept per thread keeps the
    layer's connections alive between events. The process-wide `channel_layers["default"]`
    is not used: it belongs to the consumers on the server's own loop.
    """

    pid: int
    loop: asyncio.AbstractEventLoop
    layer: BaseChannelLayer

    def close(self) -> None:
        try:
            close_pools = getattr(self.layer, "close_pools", None)
            if close_pools is not None:
                self.loop.run_until_complete(close_pools())
        finally:
            self.loop.close()


_local = threading.local()


def _sender() -> _Sender:
    sender: _Sender | None = getattr(_local, "sender", None)
    if sender is None or sender.pid != os.getpid():  # a forked worker opens its own connections
        sender = _Sender(os.getpid(), asyncio.new_event_loop(), channel_layers.make_backend("default"))
        _local.sender = sender
    return sender


def _drop_sender() -> None:
    sender: _Sender | None = getattr(_local, "sender", None)
    _local.sender = None
    if sender is not None and sender.pid == os.getpid():
        try:
            sender.close()
        except Exception:
            logger.debug("Closing the channel layer failed", exc_info=True)


def broadcast(group: str, event: str, data: dict[str, Any], seq: int = 0) -> None:
    """Send one numbered event to a group. Best effort: a lost event is healed by the snapshot.

    For sync callers (services on commit, Celery tasks): a thread running an event loop
    would fail here, and is told so in the log."""
    message = RealtimeMessage(type="realtime.event", event=event, seq=seq, data=data)
    try:
        sender = _sender()
        sender.loop.run_until_complete(sender.layer.group_send(group, message))
    except Exception:  # the channel layer being down must never fail the work itself
        logger.warning("Could not broadcast %s to %s", event, group, exc_info=True)
        _drop_sender()  # start afresh next time rather than reuse a broken connection

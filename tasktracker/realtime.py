"""Sending events to browsers through the channel layer.

Services call `broadcast` (on commit); consumers only forward what arrives. Every event is
`{"event": ..., "seq": ..., "data": ...}`: clients load a snapshot over HTTP, then apply
events whose seq is newer, so a lost event never leaves a wrong screen.
"""

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import channel_layers

logger = logging.getLogger(__name__)


async def _send(group: str, message: dict[str, Any]) -> None:
    # A layer of its own for this send: channels-redis keeps connection pools per event
    # loop, and async_to_sync runs each call on a loop that then closes, so its pools must
    # be closed here. Closing the process-wide layer's pools instead would cut the
    # connections of the consumers served by this process.
    layer = channel_layers.make_backend("default")
    try:
        await layer.group_send(group, message)
    finally:
        close_pools = getattr(layer, "close_pools", None)
        if close_pools is not None:
            await close_pools()


def broadcast(group: str, event: str, data: dict[str, Any], seq: int = 0) -> None:
    """Send one numbered event to a group. Best effort: a lost event is healed by the snapshot."""
    message = {"type": "realtime.event", "event": event, "seq": seq, "data": data}
    try:
        async_to_sync(_send)(group, message)
    except Exception:  # the channel layer being down must never fail the work itself
        logger.warning("Could not broadcast %s to %s", event, group, exc_info=True)

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from analysis.selectors import runs_visible_to
from tasktracker.realtime import RealtimeMessage
from tasktracker.types import AnyUser


def run_group(run_id: int) -> str:
    return f"run-{run_id}"


class RunProgressConsumer(AsyncJsonWebsocketConsumer):
    """Streams a run's numbered progress events. Only authenticates, joins and forwards."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        self.group = run_group(self.run_id)
        if user is None or not user.is_authenticated or not await self._may_watch(user):
            await self.close(code=4403)
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def realtime_event(self, message: RealtimeMessage) -> None:
        await self.send_json({"event": message["event"], "seq": message["seq"], "data": message["data"]})

    @database_sync_to_async
    def _may_watch(self, user: AnyUser) -> bool:
        return runs_visible_to(user).filter(pk=self.run_id).exists()

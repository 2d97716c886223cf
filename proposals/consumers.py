from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from proposals.selectors import projects_reviewable_by
from tasktracker.realtime import RealtimeMessage
from tasktracker.types import AnyUser


def proposal_group(project_id: int) -> str:
    """The group the review services broadcast a project's `proposal_reviewed` events to."""
    return f"proposals-{project_id}"


class ReviewQueueConsumer(AsyncJsonWebsocketConsumer):
    """Tells an open review queue about reviews made elsewhere: joins the proposal groups of
    the projects the user reviews (as they are when the socket opens) and forwards their
    events. Only authenticates, joins and forwards."""

    async def connect(self) -> None:
        self.proposal_groups: list[str] = []
        user = self.scope.get("user")
        project_ids = await self._reviewable_project_ids(user) if user is not None else []
        if not project_ids:
            await self.close(code=4403)
            return
        for project_id in project_ids:
            group = proposal_group(project_id)
            await self.channel_layer.group_add(group, self.channel_name)
            self.proposal_groups.append(group)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "proposal_groups", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def realtime_event(self, message: RealtimeMessage) -> None:
        await self.send_json({"event": message["event"], "seq": message["seq"], "data": message["data"]})

    @database_sync_to_async
    def _reviewable_project_ids(self, user: AnyUser) -> list[int]:
        return list(projects_reviewable_by(user).values_list("pk", flat=True))

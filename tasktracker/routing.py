from django.urls import path

from analysis.consumers import RunProgressConsumer
from proposals.consumers import ReviewQueueConsumer

websocket_urlpatterns = [
    path("ws/runs/<int:run_id>/", RunProgressConsumer.as_asgi()),
    path("ws/review/", ReviewQueueConsumer.as_asgi()),
]

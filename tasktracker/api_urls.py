"""The `/api/v1/` URLs: each app's API under a namespace of its own, e.g.
`reverse("api:sources:message-bulk")`. Chats and messages are served by
`projects.chat_api` (who sees a chat is `projects.access`'s to say), in the `sources`
namespace of their rows."""

from django.urls import include, path

app_name = "api"
urlpatterns = [
    path("", include("projects.chat_api")),
    path("", include("analysis.api")),
    path("", include("agents.api")),
    path("", include("projects.api")),
    path("", include("proposals.api")),
]

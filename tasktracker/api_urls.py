"""The `/api/v1/` URLs: each app's API under a namespace of its own, e.g.
`reverse("api:sources:message-bulk")`."""

from django.urls import include, path

app_name = "api"
urlpatterns = [
    path("", include("sources.api")),
    path("", include("analysis.api")),
    path("", include("agents.api")),
    path("", include("projects.api")),
    path("", include("proposals.api")),
]

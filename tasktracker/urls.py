from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from tasktracker.health import healthz

# `SimpleAdminConfig` (settings): the admin modules are registered here, when a process
# first resolves a URL, instead of when Django starts.
admin.autodiscover()

admin.site.site_header = "Tasktracker"
admin.site.site_title = "Tasktracker"
admin.site.index_title = "Review and configuration"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="analysis:run-list", permanent=False)),
    path("", include("analysis.urls")),
    path("", include("projects.urls")),
    path("", include("proposals.urls")),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("sources.urls")),
    path("api/v1/", include("tasktracker.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api-auth/", include("rest_framework.urls")),
]

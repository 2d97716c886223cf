from django.urls import path

from analysis import views

app_name = "analysis"
urlpatterns = [
    path("runs/", views.run_list, name="run-list"),
    path("runs/new/", views.run_new, name="run-new"),
    path("runs/<int:run_id>/", views.run_detail, name="run-detail"),
    path("runs/<int:run_id>/state/", views.run_state_json, name="run-state"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<int:run_id>/retry/", views.run_retry, name="run-retry"),
    path("runs/<int:run_id>/requeue/", views.run_requeue, name="run-requeue"),
    path("runs/<int:run_id>/close/", views.run_close, name="run-close"),
]

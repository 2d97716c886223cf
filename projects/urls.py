from django.urls import path

from projects import views

app_name = "projects"
urlpatterns = [
    path("projects/", views.project_list, name="project-list"),
    # Before `<slug>/`: "new" is a reserved slug (`projects.services.RESERVED_SLUGS`).
    path("projects/new/", views.project_new, name="project-new"),
    path("projects/<slug:slug>/", views.project_page, name="project-detail"),
    path("projects/<slug:slug>/edit/", views.project_edit, name="project-edit"),
    path("projects/<slug:slug>/history/", views.project_history, name="project-history"),
    path("projects/<slug:slug>/rollback/", views.project_rollback, name="project-rollback"),
    path("projects/<slug:slug>/tasks/", views.project_tasks, name="project-tasks"),
    path("tasks/<int:task_id>/", views.task_update, name="task-update"),
]

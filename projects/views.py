"""The team lead's pages: projects, a project, its configuration form, history, rollback."""

from collections.abc import Iterable
from typing import Any, Protocol, cast
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from projects import access
from projects.forms import ConfigEditor, NewProjectForm, TaskFilterForm, TaskUpdateForm
from projects.models import Project, ProjectConfig, Task
from projects.selectors import (
    calibrations,
    compare_configs,
    config_history,
    current_config,
    open_tasks,
    project_detail,
    projects_visible_to,
    tasks_of_project,
    tasks_visible_to,
    team_drifted,
    versions_for_diff,
)
from projects.services import TASK_TRANSITIONS, bump_config, create_project, rollback_config, update_task
from tasktracker.exceptions import DomainError
from tasktracker.types import AuthedRequest

OPEN_TASKS_SHOWN = 50


class _ListedProject(Protocol):
    """A project as `projects_visible_to` reads it (`current_configs` is a prefetch's
    `to_attr`, which the ORM's types do not know), with what the list page adds."""

    pk: int
    current_configs: list[ProjectConfig]
    current_config: ProjectConfig | None
    can_edit: bool


def _project(request: AuthedRequest, slug: str) -> Project:
    """A project the user may see; 404 for the others, as if it did not exist."""
    return get_object_or_404(project_detail(request.user), slug=slug)


def _editable(request: AuthedRequest, slug: str) -> Project:
    """A project the user may configure; 403 for one they only see."""
    project = _project(request, slug)
    if not access.can(request.user, project, access.Action.CONFIGURE):
        raise PermissionDenied
    return project


@login_required
def project_list(request: AuthedRequest) -> HttpResponse:
    user = request.user
    page = Paginator(projects_visible_to(user), 50).get_page(request.GET.get("page"))
    configurable = set(
        access.projects(user, access.Action.CONFIGURE)
        .filter(pk__in=[project.pk for project in page])
        .values_list("pk", flat=True)
    )
    for project in cast(Iterable[_ListedProject], page):
        project.can_edit = project.pk in configurable
        project.current_config = project.current_configs[0] if project.current_configs else None
    return render(
        request, "projects/project_list.html", {"page": page, "can_create": access.can_create_projects(user)}
    )


@login_required
def project_new(request: AuthedRequest) -> HttpResponse:
    if not access.can_create_projects(request.user):
        raise PermissionDenied
    form = NewProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            project = create_project(
                name=form.cleaned_data["name"],
                slug=form.cleaned_data["slug"],
                user=request.user,
                changes={"description": form.cleaned_data["description"]},
            )
        except DomainError as exc:
            form.add_domain_error(exc)
        else:
            messages.success(request, f"{project.name} created with v1.0.0; you are its team lead.")
            return redirect("projects:project-edit", slug=project.slug)
    return render(request, "projects/project_new.html", {"form": form}, status=400 if form.errors else 200)


@login_required
def project_page(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    config = current_config(project)
    tasks = open_tasks(project)
    members = list(project.memberships.all())
    context: dict[str, Any] = {
        "project": project,
        "config": config,
        "members": members,
        "tasks": tasks[:OPEN_TASKS_SHOWN],
        "open_task_count": tasks.count(),
        "can_edit": access.can(request.user, project, access.Action.CONFIGURE),
        "team_drifted": team_drifted(project, config),
        "calibrations": calibrations(project),
        "minimum_reviews": settings.CALIBRATION_MIN_REVIEWS,
    }
    return render(request, "projects/project_detail.html", context)


@login_required
def project_edit(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _editable(request, slug)
    config = current_config(project)
    editor = ConfigEditor(project=project, config=config, user=request.user, data=request.POST or None)
    if request.method == "POST" and editor.is_valid():
        try:
            new = bump_config(
                project=project,
                user=request.user,
                changes=editor.changes(),
                summary=editor.summary,
                base_version=editor.base_version,
            )
        except DomainError as exc:
            editor.add_error(exc)
        else:
            if new is None:
                messages.info(request, "Nothing changed, so no new version was made.")
            else:
                messages.success(request, f"Saved as v{new.version}.")
            return redirect("projects:project-detail", slug=project.slug)
    context = {
        "project": project,
        "config": config,
        "editor": editor,
        "form": editor.form,
        "team_drifted": team_drifted(project, config),
    }
    return render(request, "projects/project_edit.html", context, status=400 if editor.has_errors else 200)


@login_required
def project_history(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    page = Paginator(config_history(project), 50).get_page(request.GET.get("page"))
    versions = list(page)
    a, b = request.GET.get("a"), request.GET.get("b")
    if not (a and b) and page.number == 1 and len(versions) > 1:
        # By default, what the current version changed.
        a, b = versions[1].version, versions[0].version
    context: dict[str, Any] = {
        "project": project,
        "page": page,
        "versions": versions,
        "can_edit": access.can(request.user, project, access.Action.CONFIGURE),
        "a": a,
        "b": b,
    }
    status = 200
    if a and b:
        try:
            config_a, config_b = versions_for_diff(project, a, b)
        except DomainError as exc:
            context["diff_error"] = exc.message
            status = exc.status
        else:
            compared = compare_configs(config_a, config_b)
            context.update(
                config_a=config_a,
                config_b=config_b,
                compared=compared,
                changed_count=sum(1 for row in compared if row.changed),
            )
    return render(request, "projects/project_history.html", context, status=status)


@login_required
@require_POST
def project_rollback(request: AuthedRequest, slug: str) -> HttpResponse:
    project = _editable(request, slug)
    version = request.POST.get("version", "")
    previous = current_config(project)
    try:
        new = rollback_config(project=project, version=version, user=request.user)
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect("projects:project-history", slug=project.slug)
    messages.success(request, f"Rolled back to v{version}: saved as v{new.version}.")
    query = urlencode({"a": previous.version, "b": new.version}) if previous is not None else ""
    return redirect(f"{reverse('projects:project-history', args=[project.slug])}?{query}")


def _team(project: Project) -> QuerySet[User]:
    return get_user_model().objects.filter(project_memberships__project=project).order_by("username")


@login_required
def project_tasks(request: AuthedRequest, slug: str) -> HttpResponse:
    """A project's tasks, filtered by status and assignee; its team moves them and assigns
    them on the page (`task_update`)."""
    project = _project(request, slug)
    team = _team(project)
    filter_form = TaskFilterForm(request.GET, team=team)
    tasks = list(tasks_of_project(project, **filter_form.values()))
    may_change = access.can(request.user, project, access.Action.CHANGE_TASKS)
    rows = [
        (
            task,
            TaskUpdateForm(
                initial={"status": task.status, "assignee": task.assignee_id}, team=team, prefix=f"t{task.pk}"
            ),
            sorted({task.status, *TASK_TRANSITIONS[task.status]}, key=list(Task.Status.values).index),
        )
        for task in tasks
    ]
    context = {
        "project": project,
        "rows": rows,
        "filter_form": filter_form,
        "may_change": may_change,
        "query": request.GET.urlencode(),
        "status_labels": dict(Task.Status.choices),
    }
    return render(request, "projects/task_list.html", context)


@login_required
@require_POST
def task_update(request: AuthedRequest, task_id: int) -> HttpResponse:
    """Move a task and/or assign it, through `update_task`; back to the list it came from."""
    task = get_object_or_404(tasks_visible_to(request.user), pk=task_id)
    form = TaskUpdateForm(request.POST, team=_team(task.project), prefix=f"t{task.pk}")
    if not form.is_valid():
        messages.error(request, f"Task “{task.title}” was not changed: {form.errors.as_text()}")
    else:
        try:
            task = update_task(
                task=task,
                user=request.user,
                status=form.cleaned_data["status"],
                assignee=form.cleaned_data["assignee"],
            )
        except DomainError as exc:
            if exc.status == 403:
                raise PermissionDenied(exc.message) from exc
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Task “{task.title}” is {task.get_status_display().lower()}.")
    url = reverse("projects:project-tasks", args=[task.project.slug])
    query = request.GET.urlencode()
    return redirect(f"{url}{'?' + query if query else ''}#task-{task.pk}")

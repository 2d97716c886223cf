from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from analysis.models import AnalysisRun
from projects.models import Project


def runs_visible_to(user: AbstractBaseUser | AnonymousUser) -> QuerySet[AnalysisRun]:
    """Runs a user may watch: staff see all, others the runs of projects they are on."""
    runs = AnalysisRun.objects.select_related("assignment__agent", "assignment__task_config", "started_by")
    if not user.is_authenticated:
        return runs.none()
    if user.is_staff:
        return runs
    return runs.filter(projects__memberships__user=user).distinct()


def can_start_runs(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Staff, or a team lead of some project (who may then start runs of their projects)."""
    if not user.is_authenticated:
        return False
    return user.is_staff or user.project_memberships.filter(role="lead").exists()


def startable_projects(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Project]:
    """The active projects a user may start runs of: all for staff, else those they lead."""
    projects = Project.objects.filter(is_active=True)
    if not user.is_authenticated:
        return projects.none()
    if user.is_staff:
        return projects
    return projects.filter(memberships__user=user, memberships__role="lead")


def can_start_run_of(user: AbstractBaseUser | AnonymousUser, projects: Iterable[Project]) -> bool:
    """Whether a user may start a run over `projects`: staff, or the lead of every one."""
    project_ids = {project.pk for project in projects}
    if not project_ids or not user.is_authenticated:
        return False
    allowed = startable_projects(user).filter(pk__in=project_ids).values_list("pk", flat=True)
    return project_ids <= set(allowed)


def can_operate_run(user: AbstractBaseUser | AnonymousUser, run: AnalysisRun) -> bool:
    """Cancel or retry: staff, or a lead of every project of the run."""
    if not user.is_authenticated:
        return False
    if user.is_staff:
        return True
    project_ids = set(run.projects.values_list("pk", flat=True))
    led = set(user.project_memberships.filter(role="lead").values_list("project_id", flat=True))
    return bool(project_ids) and project_ids <= led

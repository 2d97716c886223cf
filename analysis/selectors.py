"""Reads of the `analysis` app: runs as a user may see and operate them. The rules are
`projects.access`'s: a run is seen by the members of one of its projects, and operated
(started, cancelled, retried, closed) by a lead of every one of them."""

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from analysis.models import AnalysisRun
from projects import access
from projects.models import Project

User = AbstractBaseUser | AnonymousUser


def runs_visible_to(user: User) -> QuerySet[AnalysisRun]:
    """Runs a user may watch: staff see all, others the runs of projects they are on."""
    runs = AnalysisRun.objects.select_related("assignment__agent", "assignment__task_config", "started_by")
    return access.scope(runs, user, via="projects")


def can_start_runs(user: User) -> bool:
    """Staff, or a team lead of some project (who may then start runs of their projects)."""
    return access.can_anywhere(user, access.Action.RUN)


def startable_projects(user: User) -> QuerySet[Project]:
    """The active projects a user may start runs of: all for staff, else those they lead."""
    return access.projects(user, access.Action.RUN).filter(is_active=True)


def can_start_run_of(user: User, projects: Iterable[Project]) -> bool:
    """Whether a user may start a run over `projects`: staff, or the lead of every one."""
    return access.can_all(user, projects, access.Action.RUN)


def can_operate_run(user: User, run: AnalysisRun) -> bool:
    """Cancel, retry or close: staff, or a lead of every project of the run."""
    return access.can_all(user, run.projects.values_list("pk", flat=True), access.Action.RUN)

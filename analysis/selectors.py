"""Reads of the `analysis` app: runs as a user may see and operate them. The rules are
`projects.access`'s: a run is seen by the members of one of its projects, and operated
(started, cancelled, retried, closed) by a lead of every one of them."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeAlias, TypedDict

from django.db.models import Count, OuterRef, Prefetch, Q, QuerySet, Subquery, Window
from django.db.models.functions import Coalesce
from django.utils import timezone

from analysis.models import AnalysisRun
from projects import access
from projects.models import Project, ProjectConfig
from proposals.models import TaskProposal
from tasktracker.types import AnyUser

if TYPE_CHECKING:
    # A type checker's dependency only (django-stubs brings it): not installed in production.
    from django_stubs_ext import WithAnnotations


def runs_visible_to(user: AnyUser) -> QuerySet[AnalysisRun]:
    """Runs a user may watch: staff see all, others the runs of projects they are on."""
    runs = AnalysisRun.objects.select_related("assignment__agent", "assignment__task_config", "started_by")
    return access.scope(runs, user, via="projects")


def can_start_runs(user: AnyUser) -> bool:
    """Staff, or a team lead of some project (who may then start runs of their projects)."""
    return access.can_anywhere(user, access.Action.RUN)


def startable_projects(user: AnyUser) -> QuerySet[Project]:
    """The active projects a user may start runs of: all for staff, else those they lead."""
    return access.projects(user, access.Action.RUN).filter(is_active=True)


def can_start_run_of(user: AnyUser, projects: Iterable[Project]) -> bool:
    """Whether a user may start a run over `projects`: staff, or the lead of every one."""
    return access.can_all(user, projects, access.Action.RUN)


def can_operate_run(user: AnyUser, run: AnalysisRun) -> bool:
    """Cancel, retry or close: staff, or a lead of every project of the run. Reads the run's
    projects as prefetched, when they are (a list of runs then costs no query per run)."""
    return access.can_all(user, [project.pk for project in run.projects.all()], access.Action.RUN)


def pending_proposals(*, project_ids: QuerySet | None = None) -> Coalesce:
    """An annotation: how many proposals of each run are pending (of `project_ids` only, when
    given), as a subquery rather than a join, so it adds to any queryset of runs."""
    pending = TaskProposal.objects.filter(run=OuterRef("pk"), status=TaskProposal.Status.PENDING)
    if project_ids is not None:
        pending = pending.filter(project_id__in=project_ids)
    counts = pending.order_by().values("run").annotate(count=Count("pk")).values("count")
    return Coalesce(Subquery(counts), 0)


class PendingCount(TypedDict):
    pending_count: int


# A run as `runs_to_close` reads it.
RunToClose: TypeAlias = "WithAnnotations[AnalysisRun, PendingCount]"


def runs_to_close(queryset: QuerySet[AnalysisRun]) -> "QuerySet[RunToClose]":
    """`queryset` as a confirmation of closing lists it: with each run's projects and its
    pending proposals counted (`pending_count`), in two queries."""
    return queryset.prefetch_related("projects").annotate(pending_count=pending_proposals())


# The top bar's notices of finished runs (`analysis.context_processors.run_notices`).

NOTICE_DAYS = 7
NOTICE_LIMIT = 3


@dataclass(frozen=True)
class RunNotices:
    """The newest runs to tell a user about (each with `pending`, the proposals they may
    review still pending, and its projects) and how many more there are."""

    runs: list[AnalysisRun] = field(default_factory=list)
    more: int = 0

    def __bool__(self) -> bool:
        return bool(self.runs)


def finished_run_notices(
    user: AnyUser, *, now: datetime | None = None, limit: int = NOTICE_LIMIT
) -> RunNotices:
    """The runs finished in the last `NOTICE_DAYS` days that still want `user`: completed
    ones with proposals they may review still pending, and failed ones (a retried run is
    running again). Told to the run's starter while they still see it, and to the reviewers
    of its projects as `access.reviewers` counts them, so staff, who may review every
    project, are told only of the runs they started or of projects they hold a role in.

    Runs on every page: one query, and one more for the projects' names when there is a
    notice; none for an anonymous user. Newest first.
    """
    if not access.signed_in(user):
        return RunNotices()
    now = now or timezone.now()
    may_review = access.project_ids(user, access.Action.REVIEW)
    reviewing = access.reviewers(may_review).filter(user=user).values("project_id")
    completed, failed = AnalysisRun.Status.COMPLETED, AnalysisRun.Status.FAILED
    runs = (
        access.scope(AnalysisRun.objects.all(), user, via="projects")
        .filter(
            Q(started_by=user) | Q(pk__in=AnalysisRun.objects.filter(projects__in=reviewing).values("pk")),
            status__in=[completed, failed],
            finished_at__gte=now - timedelta(days=NOTICE_DAYS),
        )
        .annotate(pending=pending_proposals(project_ids=may_review))
        .filter(Q(status=failed) | Q(pending__gt=0))
        # Counted over every matching run before the slice: how many more there are.
        .annotate(matching=Window(Count("pk")))
        .only("pk", "status", "finished_at")
        .prefetch_related(Prefetch("projects", queryset=Project.objects.only("pk", "name").order_by("name")))
        .order_by("-finished_at", "-pk")
    )
    shown = list(runs[:limit])
    return RunNotices(runs=shown, more=shown[0].matching - len(shown) if shown else 0)


def recent_runs_of_project(project: Project, *, limit: int = 10) -> list[AnalysisRun]:
    """The project's latest analysis runs, each with the version of this project it used
    (`run.project_configs`)."""
    runs = (
        AnalysisRun.objects.filter(projects=project)
        .order_by("-created_at")
        .prefetch_related(
            Prefetch(
                "config_versions",
                queryset=ProjectConfig.objects.filter(project=project),
                to_attr="project_configs",
            )
        )
    )
    return list(runs[:limit])

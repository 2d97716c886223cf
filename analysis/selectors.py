from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from analysis.models import AnalysisRun


def runs_visible_to(user: AbstractBaseUser | AnonymousUser) -> QuerySet[AnalysisRun]:
    """Runs a user may watch: staff see all, others the runs of projects they are on."""
    runs = AnalysisRun.objects.select_related("assignment__agent", "assignment__task_config", "started_by")
    if not user.is_authenticated:
        return runs.none()
    if user.is_staff:
        return runs
    return runs.filter(projects__memberships__user=user).distinct()

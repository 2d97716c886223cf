from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from analysis.forms import NewRunForm
from analysis.models import AnalysisRun
from analysis.selectors import can_operate_run, can_start_runs, runs_visible_to
from analysis.services import (
    cancel_run,
    close_run,
    requeue_stalled_batches,
    retry_failed_batches,
    run_state,
    start_run,
)
from proposals.models import TaskProposal
from tasktracker.exceptions import DomainError
from tasktracker.types import AuthedRequest


@login_required
def run_list(request: AuthedRequest) -> HttpResponse:
    runs = runs_visible_to(request.user).prefetch_related("projects")
    page = Paginator(runs, 25).get_page(request.GET.get("page"))
    return render(
        request, "analysis/run_list.html", {"page": page, "can_start": can_start_runs(request.user)}
    )


@login_required
def run_detail(request: AuthedRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(runs_visible_to(request.user).prefetch_related("projects"), pk=run_id)
    context: dict[str, Any] = {
        "run": run,
        "state": run_state(run),
        "can_operate": can_operate_run(request.user, run),
        "versions": run.config_snapshot.get("projects", []),
        **review_figures(run.review_stats),
    }
    return render(request, "analysis/run_detail.html", context)


def review_figures(stats: dict[str, Any]) -> dict[str, Any]:
    """A closed run's review figures, the bands in the queue's order, with percentages."""
    order = [band for band in ("high", "medium", "low") if band in stats.get("bands", {})]

    def percent(rate: float | None) -> int | None:
        return None if rate is None else round(100 * rate)

    bands = [
        (name, {**stats["bands"][name], "percent": percent(stats["bands"][name]["approval_rate"])})
        for name in order
    ]
    return {"bands": bands, "overall_percent": percent(stats.get("approval_rate"))}


@login_required
def run_state_json(request: AuthedRequest, run_id: int) -> JsonResponse:
    """The snapshot a run page loads before applying live events newer than its `seq`, and
    again when it sees a gap in their numbers: the run's counters and its batches."""
    run = get_object_or_404(runs_visible_to(request.user), pk=run_id)
    return JsonResponse(run_state(run))


@login_required
def run_new(request: AuthedRequest) -> HttpResponse:
    if not can_start_runs(request.user):
        raise PermissionDenied
    form = NewRunForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            run = start_run(
                window_start=form.cleaned_data["window_start"],
                window_end=form.cleaned_data["window_end"],
                projects=list(form.cleaned_data["projects"]),
                assignment=form.cleaned_data["assignment"],
                user=request.user,
            )
        except DomainError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Run {run.pk} started.")
            return redirect("analysis:run-detail", run_id=run.pk)
    return render(request, "analysis/run_form.html", {"form": form}, status=400 if form.errors else 200)


def _operate(request: AuthedRequest, run_id: int) -> AnalysisRun:
    run = get_object_or_404(runs_visible_to(request.user), pk=run_id)
    if not can_operate_run(request.user, run):
        raise PermissionDenied
    return run


@login_required
@require_POST
def run_cancel(request: AuthedRequest, run_id: int) -> HttpResponse:
    run = _operate(request, run_id)
    try:
        cancel_run(run=run, user=request.user)
        messages.success(request, f"Run {run.pk} cancelled.")
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect("analysis:run-detail", run_id=run.pk)


@login_required
@require_POST
def run_retry(request: AuthedRequest, run_id: int) -> HttpResponse:
    run = _operate(request, run_id)
    try:
        count = retry_failed_batches(run=run)
        messages.success(request, f"{count} failed batch(es) queued again.")
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect("analysis:run-detail", run_id=run.pk)


@login_required
@require_POST
def run_requeue(request: AuthedRequest, run_id: int) -> HttpResponse:
    """Queue a running run's stalled batches again now (`requeue_stalled_batches`)."""
    run = _operate(request, run_id)
    try:
        count = requeue_stalled_batches(run=run)
        messages.success(request, f"{count} stalled batch(es) queued again.")
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect("analysis:run-detail", run_id=run.pk)


@login_required
def run_close(request: AuthedRequest, run_id: int) -> HttpResponse:
    """Close a completed run: a confirmation page (with what is left to review), then the
    POST closes it through `close_run`, which refuses, with the reason, while proposals wait."""
    run = _operate(request, run_id)
    if request.method == "POST":
        try:
            close_run(run_id=run.pk)
        except DomainError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Run {run.pk} closed.")
        return redirect("analysis:run-detail", run_id=run.pk)
    pending = run.proposals.filter(status=TaskProposal.Status.PENDING).count()
    return render(request, "analysis/run_close.html", {"run": run, "pending": pending})

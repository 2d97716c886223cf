"""The review queue: one proposal at a time in its chat context, the most confident and
oldest first. Approve and reject are plain forms that work without JavaScript; the
shortcuts and the live notices of static/js/review_queue.js only add to them.

A proposal of a project the user is not on is a 404; a user who reviews no project (or
not this proposal's) gets a page saying who does, with a 403 (`projects.access`)."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms import BaseFormSet
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from projects import access
from proposals.forms import (
    ALL_STATUSES,
    AUTO_APPROVED,
    DuplicateForm,
    ProposalEditForm,
    QueueFilterForm,
    RejectForm,
    SplitFormSet,
)
from proposals.models import ReviewEvent, TaskProposal
from proposals.selectors import (
    duplicate_candidates,
    guidelines_of,
    may_review_any,
    projects_reviewable_by,
    proposal_list,
    proposals_reviewable_by,
    proposals_visible_to,
    queue_neighbours,
    queue_progress,
    review_queue,
    source_context,
    triage_list,
    who_reviews_for,
)
from proposals.services import (
    approve_proposal,
    edit_proposal,
    mark_duplicate,
    mark_duplicate_of_task,
    merge_with_similar,
    reject_proposal,
    split_proposal,
    undo_last_action,
)
from tasktracker.exceptions import DomainError
from tasktracker.types import AnyUser, AuthedRequest

# The proposal last reviewed in this session, offered for undo on the next page.
LAST_REVIEWED = "proposals.last_reviewed"


@dataclass(frozen=True)
class QueueFilters:
    project_id: int | None = None
    band: str | None = None
    run_id: int | None = None
    status: str = TaskProposal.Status.PENDING
    text: str = ""

    @property
    def query_pairs(self) -> list[tuple[str, int | str]]:
        """The filters that differ from the default, as query-string pairs."""
        status = self.status if self.status != TaskProposal.Status.PENDING else None
        pairs = (
            ("project", self.project_id),
            ("band", self.band),
            ("run", self.run_id),
            ("status", status),
            ("q", self.text),
        )
        return [(key, value) for key, value in pairs if value]

    @property
    def query(self) -> str:
        return urlencode(self.query_pairs)

    def url(self, name: str, *args: int | str) -> str:
        """A review page's URL that keeps the queue's filters."""
        url = reverse(f"proposals:{name}", args=args)
        return f"{url}?{self.query}" if self.query else url

    def queue(self, user: AnyUser, *, status: str | None = None) -> QuerySet[TaskProposal]:
        """The filtered proposals: of the filter's status, or of `status` when given."""
        status = status or self.status
        queue = review_queue(
            user,
            project_id=self.project_id,
            band=self.band,
            run_id=self.run_id,
            status={ALL_STATUSES: None, AUTO_APPROVED: TaskProposal.Status.APPROVED}.get(status, status),
            text=self.text,
        )
        if status == AUTO_APPROVED:
            return queue.filter(review_action=ReviewEvent.Action.AUTO_APPROVE)
        return queue

    def pending(self, user: AnyUser) -> QuerySet[TaskProposal]:
        return self.queue(user, status=TaskProposal.Status.PENDING)


def _filters(request: AuthedRequest) -> tuple[QueueFilterForm, QueueFilters]:
    form = QueueFilterForm(request.GET, projects=projects_reviewable_by(request.user).order_by("name"))
    return form, QueueFilters(**form.values())


class NotAReviewer(PermissionDenied):
    """The user reviews no project, or not the project of the proposal asked for."""


def review_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A page of the review queue: for a user who may not review, a page that says who
    may (a 403); a caller that wants no HTML gets the bare 403."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except NotAReviewer:
            if not request.accepts("text/html"):
                raise
            context = {
                "reviews_any": may_review_any(request.user),
                "reviewers": who_reviews_for(request.user),
            }
            return render(request, "proposals/not_a_reviewer.html", context, status=403)

    return wrapper


def _reviewer(request: AuthedRequest) -> None:
    if not may_review_any(request.user):
        raise NotAReviewer


def _reviewable(
    request: AuthedRequest, proposal_id: int, queryset: QuerySet[TaskProposal] | None = None
) -> TaskProposal:
    """A proposal the user reviews: a 404 for one of a project they are not on, as if it did
    not exist, a 403 for one they only see."""
    if queryset is None:
        queryset = TaskProposal.objects.select_related("project")
    proposal = get_object_or_404(proposals_visible_to(request.user, queryset), pk=proposal_id)
    if not access.can(request.user, proposal.project_id, access.Action.REVIEW):
        raise NotAReviewer
    return proposal


# The list beside the shown proposal holds this many of the queue's first proposals.
TRIAGE_LIST_SIZE = 50


def _page(
    request: AuthedRequest,
    proposal: TaskProposal | None,
    filtering: tuple[QueueFilterForm, QueueFilters],
    *,
    reject_form: RejectForm | None = None,
    status: int = 200,
) -> HttpResponse:
    filter_form, filters = filtering
    queue = filters.queue(request.user)
    previous_id = next_id = None
    if proposal is not None:
        previous_id, next_id = queue_neighbours(queue, proposal)
    listed = triage_list(queue, limit=TRIAGE_LIST_SIZE)
    context = {
        "proposal": proposal,
        "excerpts": source_context(proposal) if proposal is not None else [],
        "guidelines": guidelines_of(proposal),
        "remaining": filters.pending(request.user).count(),
        "progress": queue_progress(filters.queue(request.user, status=ALL_STATUSES)),
        "listed": listed,
        "listed_more": len(listed) == TRIAGE_LIST_SIZE,
        "previous_url": filters.url("proposal", previous_id) if previous_id else "",
        "next_url": filters.url("proposal", next_id) if next_id else "",
        "queue_url": filters.url("queue"),
        "state_url": filters.url("queue-state"),
        "filters": filters,
        "filter_form": filter_form,
        "reject_form": reject_form or RejectForm(),
        "last_reviewed": request.session.get(LAST_REVIEWED),
    }
    return render(request, "proposals/review.html", context, status=status)


def _reviewed(request: AuthedRequest, proposal: TaskProposal, message: str | SafeString) -> HttpResponse:
    """Report a review and go on to the proposal after it in the queue (or the queue's top)."""
    messages.success(request, message)
    request.session[LAST_REVIEWED] = {"id": proposal.pk, "title": proposal.title}
    _, filters = _filters(request)
    # By value: the proposal has just left the queue, its place in the order has not.
    _, next_id = queue_neighbours(filters.queue(request.user), proposal)
    return redirect(filters.url("proposal", next_id) if next_id else filters.url("queue"))


def _refused(request: AuthedRequest, proposal: TaskProposal, error: DomainError) -> HttpResponse:
    messages.error(request, error.message)
    _, filters = _filters(request)
    return redirect(filters.url("proposal", proposal.pk))


@login_required
@review_page
def queue(request: AuthedRequest) -> HttpResponse:
    _reviewer(request)
    filtering = _filters(request)
    return _page(request, filtering[1].queue(request.user).first(), filtering)


@login_required
@review_page
def proposal_page(request: AuthedRequest, proposal_id: int) -> HttpResponse:
    return _page(request, _reviewable(request, proposal_id, proposal_list()), _filters(request))


@login_required
def queue_state(request: AuthedRequest) -> JsonResponse:
    """The snapshot an open queue reloads when a review happens elsewhere: how many remain,
    and the status of the proposal it shows (`?current=<id>`)."""
    _reviewer(request)
    _, filters = _filters(request)
    state: dict[str, Any] = {"remaining": filters.pending(request.user).count(), "current": None}
    current = request.GET.get("current", "")
    if current.isdigit():
        status = (
            proposals_reviewable_by(request.user, TaskProposal.objects.all())
            .filter(pk=int(current))
            .values_list("status", flat=True)
            .first()
        )
        if status is not None:
            state["current"] = {"id": int(current), "status": status}
    return JsonResponse(state)


@login_required
@require_POST
@review_page
def approve(request: AuthedRequest, proposal_id: int) -> HttpResponse:
    proposal = _reviewable(request, proposal_id)
    try:
        task = approve_proposal(proposal_id=proposal.pk, user=request.user)
    except DomainError as exc:
        return _refused(request, proposal, exc)
    tasks_url = reverse("projects:project-tasks", args=[proposal.project.slug])
    created = format_html(
        'Approved proposal {}: task <a href="{}#task-{}">#{} “{}”</a> created.',
        proposal.pk, tasks_url, task.pk, task.pk, task.title,
    )  # fmt: skip
    return _reviewed(request, proposal, created)


@login_required
@require_POST
@review_page
def reject(request: AuthedRequest, proposal_id: int) -> HttpResponse:
    proposal = _reviewable(request, proposal_id)
    form = RejectForm(request.POST)
    if form.is_valid():
        try:
            reject_proposal(proposal_id=proposal.pk, user=request.user, reason=form.cleaned_data["reason"])
        except DomainError as exc:
            form.add_error(None, exc.message)
        else:
            return _reviewed(request, proposal, f"Rejected proposal {proposal.pk} “{proposal.title}”.")
    shown = get_object_or_404(proposal_list(), pk=proposal.pk)
    return _page(request, shown, _filters(request), reject_form=form, status=400)


@login_required
@review_page
def edit(request: AuthedRequest, proposal_id: int) -> HttpResponse:
    """Change the proposal's fields, then save it (still pending) or approve it as changed."""
    proposal = _reviewable(request, proposal_id, proposal_list())
    form = ProposalEditForm(request.POST or None, instance=proposal)
    approving = "approve" in request.POST
    if request.method == "POST" and form.is_valid():
        edits = form.edits()
        try:
            if approving:
                task = approve_proposal(proposal_id=proposal.pk, user=request.user, edits=edits or None)
            elif edits:
                edit_proposal(proposal_id=proposal.pk, user=request.user, edits=edits)
        except DomainError as exc:
            form.add_error(None, exc.message)
        else:
            if approving:
                message = f"Approved proposal {proposal.pk}: task #{task.pk} “{task.title}” created."
                return _reviewed(request, proposal, message)
            messages.success(
                request, f"Saved your changes to proposal {proposal.pk}." if edits else "Nothing changed."
            )
            _, filters = _filters(request)
            return redirect(filters.url("proposal", proposal.pk))
    _, filters = _filters(request)
    context = {
        "proposal": proposal,
        "form": form,
        "filters": filters,
        "back_url": filters.url("proposal", proposal.pk),
    }
    return render(request, "proposals/edit.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
@review_page
def merge(request: AuthedRequest, proposal_id: int) -> HttpResponse:
    """Merge the proposal with the similar proposal it was linked to."""
    proposal = _reviewable(request, proposal_id)
    try:
        kept = merge_with_similar(proposal_id=proposal.pk, user=request.user)
    except DomainError as exc:
        return _refused(request, proposal, exc)
    return _reviewed(
        request, proposal, f"Merged proposal {proposal.pk} into proposal {kept.pk} “{kept.title}”."
    )


@login_required
@require_POST
@review_page
def undo(request: AuthedRequest, proposal_id: int) -> HttpResponse:
    proposal = _reviewable(request, proposal_id)
    try:
        restored = undo_last_action(proposal_id=proposal.pk, user=request.user)
    except DomainError as exc:
        return _refused(request, proposal, exc)
    if (request.session.get(LAST_REVIEWED) or {}).get("id") == proposal.pk:
        del request.session[LAST_REVIEWED]
    status = restored.get_status_display().lower()
    messages.success(request, f"Undid the last review of proposal {proposal.pk}: it is {status} again.")
    _, filters = _filters(request)
    return redirect(filters.url("proposal", proposal.pk))


def _with_another_part(data: QueryDict, formset: BaseFormSet) -> list[dict[str, str | list[str]]]:
    """The parts typed so far, and an empty one: the split page's "Add a part"."""
    parts: list[dict[str, str | list[str]]] = [
        {
            "title": data.get(f"part-{number}-title", ""),
            "description": data.get(f"part-{number}-description", ""),
            "sources": data.getlist(f"part-{number}-sources"),
        }
        for number in range(min(formset.total_form_count(), formset.max_num - 1))
    ]
    return [*parts, {}]


@login_required
@review_page
def split(request: AuthedRequest, proposal_id: int) -> HttpResponse:
    """Split the proposal into parts (two at first; "Add a part" adds one), each with a
    title and some of its source messages."""
    proposal = _reviewable(request, proposal_id, proposal_list())
    sources = proposal.source_messages.all()
    formset = SplitFormSet(request.POST or None, form_kwargs={"messages": sources}, prefix="part")
    status = 200
    if request.method == "POST" and "add" in request.POST:
        initial = _with_another_part(request.POST, formset)
        formset = SplitFormSet(initial=initial, form_kwargs={"messages": sources}, prefix="part")
    elif request.method == "POST":
        status = 400
        if formset.is_valid():
            try:
                parts = split_proposal(
                    proposal_id=proposal.pk, user=request.user, parts=[form.part() for form in formset]
                )
            except DomainError as exc:
                formset.non_form_errors().append(exc.message)
            else:
                numbers = ", ".join(str(part.pk) for part in parts)
                return _reviewed(request, proposal, f"Split proposal {proposal.pk} into proposals {numbers}.")
    _, filters = _filters(request)
    context = {
        "proposal": proposal,
        "formset": formset,
        "back_url": filters.url("proposal", proposal.pk),
    }
    return render(request, "proposals/split.html", context, status=status)


@login_required
@review_page
def duplicate(request: AuthedRequest, proposal_id: int) -> HttpResponse:
    """Mark the proposal as a duplicate of a live proposal or a task of its project, found
    by searching their titles (`?find=`; `q` is the queue's own search, kept for the way
    back); with no search, the ones it was linked to."""
    proposal = _reviewable(request, proposal_id, proposal_list())
    text = request.GET.get("find", "").strip()[:200]
    form = DuplicateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        kind, target_id = form.target()
        try:
            if kind == "task":
                mark_duplicate_of_task(proposal_id=proposal.pk, task_id=target_id, user=request.user)
                original = f"task #{target_id}"
            else:
                mark_duplicate(proposal_id=proposal.pk, of_id=target_id, user=request.user)
                original = f"proposal {target_id}"
        except DomainError as exc:
            form.add_error(None, exc.message)
        else:
            message = f"Marked proposal {proposal.pk} as a duplicate of {original}."
            return _reviewed(request, proposal, message)
    proposals, tasks = duplicate_candidates(proposal, text)
    _, filters = _filters(request)
    context = {
        "proposal": proposal,
        "form": form,
        "text": text,
        "candidate_proposals": proposals,
        "candidate_tasks": tasks,
        "filters": filters,
        "back_url": filters.url("proposal", proposal.pk),
    }
    return render(request, "proposals/duplicate.html", context, status=400 if form.errors else 200)

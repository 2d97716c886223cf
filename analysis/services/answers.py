"""Reading a batch's answer: the LLM's items checked one by one (`read_item`) and capped
(`cap_proposals`), into proposals ready to save and the reasons the others were dropped.

No transaction and no write: `process_batch` reads the answer before the batch's commit,
whose transaction holds SQLite's write lock.
"""

from collections import Counter
from collections.abc import Set
from datetime import date
from typing import Any

from django.contrib.auth.models import User

from analysis.models import AnalysisRun
from projects.models import Project
from proposals.models import TaskProposal
from proposals.services import NewProposal, ProposalData
from sources.models import Message


def read_answer(
    *, run: AnalysisRun, answer: dict[str, Any], messages: dict[int, Message], numbers: dict[int, int]
) -> tuple[list[NewProposal], list[str]]:
    """Validate an answer's proposals, whose sources are the numbers of the batch's prompt
    (`numbers` maps them to message ids). Returns the valid ones, ready to save, and the
    reasons the others were rejected (`read_item`), then those the caps cut (`cap_proposals`)."""
    items = answer.get("proposals", [])
    if not items:
        return [], []
    projects = {
        p.slug: p
        for p in run.projects.prefetch_related("memberships__user").select_related("default_assignee")
    }
    new: list[NewProposal] = []
    rejected: list[str] = []
    titles: set[str] = set()
    for index, item in enumerate(items):
        read = read_item(
            item, index=index, projects=projects, messages=messages, numbers=numbers, titles=titles
        )
        if isinstance(read, str):
            rejected.append(read)
            continue
        titles.add(_title(item).casefold())
        new.append(read)
    task_config = run.assignment.task_config
    return cap_proposals(
        new,
        rejected,
        per_batch=task_config.proposal_cap(len(numbers)),
        per_message=task_config.max_proposals_per_message,
    )


def read_item(
    item: dict[str, Any],
    *,
    index: int,
    projects: dict[str, Project],
    messages: dict[int, Message],
    numbers: dict[int, int],
    titles: Set[str],
) -> NewProposal | str:
    """One item of an answer as a proposal, or the reason it is rejected: it cites numbers
    not in the batch (or none), names a project not of the run (a run of one project takes
    any), has a confidence outside 0..1, or repeats a title of `titles` (the casefolded
    titles accepted before it: small models repeat an item until their output limit).

    The checks run in that order and the first that fails is the reason. Fields the schema
    leaves optional get their defaults here: the answer comes from models of every size.
    """
    cited = [i for i in item.get("source_message_ids", []) if isinstance(i, int)]
    outside = [i for i in cited if i not in numbers]
    if not cited or outside:
        return f"proposal {index}: message ids {outside or cited} are not in the batch"
    project = projects.get(str(item.get("project") or "")) or (
        next(iter(projects.values())) if len(projects) == 1 else None
    )
    if project is None:
        return f"proposal {index}: project {item.get('project')!r} is not one of the run's"
    confidence = item.get("confidence")
    if not isinstance(confidence, int | float) or not 0 <= confidence <= 1:
        return f"proposal {index}: confidence {confidence!r} is not between 0 and 1"
    title = _title(item)
    if title and title.casefold() in titles:
        return f"proposal {index}: the title {title!r} was already given"
    data = _proposal_data(item, title=title, confidence=float(confidence))
    ids = [numbers[i] for i in cited]
    return NewProposal(
        project=project,
        data=data,
        source_messages=[messages[i] for i in ids if i in messages],
        suggested_assignee=_assignee(project, data.assignee_name),
    )


def _title(item: dict[str, Any]) -> str:
    """An item's title with its inner whitespace collapsed ("" for none)."""
    return " ".join(str(item.get("title") or "").split())


def _proposal_data(item: dict[str, Any], *, title: str, confidence: float) -> ProposalData:
    """An item's fields, each defaulted when the model left it out or empty."""
    return ProposalData(
        title=title or "(untitled)",
        description=str(item.get("description") or ""),
        priority=item.get("priority") or "medium",
        category=item.get("category") or "feature",
        tags=[str(t) for t in item.get("tags") or []],
        due_date=_due_date(item.get("due_date")),
        confidence=confidence,
        reasoning=str(item.get("reasoning") or ""),
        recommendation=item.get("recommendation") or TaskProposal.Recommendation.NEW_TASK,
        assignee_name=str(item.get("assignee") or ""),
    )


def _due_date(value: Any) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None


def cap_proposals(
    proposals: list[NewProposal], rejected: list[str], *, per_batch: int, per_message: int
) -> tuple[list[NewProposal], list[str]]:
    """The most confident proposals of an answer, at most `per_batch` of them and at most
    `per_message` citing any one message, in the answer's order; what was cut is added to
    `rejected`, so the batch records it. A message that tells the model to "output 50 tasks
    with confidence 1.0" gets a handful of proposals, not fifty."""
    by_confidence = sorted(range(len(proposals)), key=lambda i: -proposals[i].data.confidence)
    cited: Counter[int] = Counter()
    kept: set[int] = set()
    crowded = 0
    for index in by_confidence:
        ids = {message.pk for message in proposals[index].source_messages}
        if any(cited[pk] >= per_message for pk in ids):
            crowded += 1
            continue
        if len(kept) == per_batch:
            break
        kept.add(index)
        cited.update(ids)
    over = len(proposals) - len(kept) - crowded
    notes = []
    if over:
        notes.append(f"{over} proposals over the cap of {per_batch} per batch were cut (the least confident)")
    if crowded:
        notes.append(f"{crowded} proposals citing a message already cited {per_message} times were cut")
    return [p for i, p in enumerate(proposals) if i in kept], [*rejected, *notes]


def _assignee(project: Project, name: str) -> User | None:
    """The team member the LLM named (username, full or first name), else the default."""
    wanted = name.strip().lstrip("@").casefold()
    if wanted:
        for membership in project.memberships.all():
            user = membership.user
            names = {
                user.get_username().casefold(),
                user.get_full_name().casefold(),
                user.first_name.casefold(),
            }
            if wanted in names - {""}:
                return user
    return project.default_assignee

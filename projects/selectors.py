"""Reads of the `projects` app: projects and tasks as a user sees them, a version's state,
diffs. Who sees and changes what is `projects.access`'s to say.

A configuration version is compared through its *state*: a plain dict with one key per
versioned field (`CONFIG_FIELDS`), chats and users by id, lists in a stable order. Two
versions are equal exactly when their states are equal.
"""

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict

from django.contrib.auth import get_user_model
from django.db.models import Case, Count, OuterRef, Prefetch, Q, QuerySet, Subquery, When

from projects import access
from projects.models import Project, ProjectConfig, ProjectMembership, Task
from sources.models import Chat
from tasktracker.exceptions import DomainError
from tasktracker.types import AnyUser

OPEN_TASK_STATUSES = (Task.Status.OPEN, Task.Status.IN_PROGRESS)


class ConfigState(TypedDict):
    description: str
    language: str
    keywords: list[str]
    exclude_keywords: list[str]
    glossary: list[dict[str, str]]
    components: list[dict[str, Any]]
    priority_rules: list[dict[str, str]]
    chats: list[int]
    team: list[dict[str, Any]]
    default_assignee: int | None
    batch_time_gap_minutes: int
    schedule: str
    auto_approve_band: str
    auto_approve_min_rate: float
    auto_approve_min_reviews: int


CONFIG_FIELDS: tuple[str, ...] = tuple(ConfigState.__annotations__)

FIELD_LABELS: dict[str, str] = {
    "description": "Description",
    "language": "Language",
    "keywords": "Keywords",
    "exclude_keywords": "Exclude keywords",
    "glossary": "Glossary",
    "components": "Components",
    "priority_rules": "Priority rules",
    "chats": "Chats",
    "team": "Team",
    "default_assignee": "Default assignee",
    "batch_time_gap_minutes": "Batch time gap (minutes)",
    "schedule": "Schedule",
    "auto_approve_band": "Auto-approve band",
    "auto_approve_min_rate": "Auto-approve minimum approval rate",
    "auto_approve_min_reviews": "Auto-approve minimum reviews",
}


def default_state() -> ConfigState:
    """The state of a project that has no version yet (the model's defaults)."""
    return ConfigState(
        description="",
        language="en",
        keywords=[],
        exclude_keywords=[],
        glossary=[],
        components=[],
        priority_rules=[],
        chats=[],
        team=[],
        default_assignee=None,
        batch_time_gap_minutes=60,
        schedule="",
        auto_approve_band="",
        auto_approve_min_rate=0.95,
        auto_approve_min_reviews=50,
    )


def team_snapshot(members: Iterable[tuple[int, str]]) -> list[dict[str, Any]]:
    """The team as a version stores it: `[{"user_id", "role"}]` sorted by user id."""
    return [{"user_id": user_id, "role": role} for user_id, role in sorted(members)]


def config_state(config: ProjectConfig) -> ConfigState:
    """What a version says, as a comparable dict. Prefetch `chats` to read many versions."""
    return ConfigState(
        description=config.description,
        language=config.language,
        keywords=list(config.keywords),
        exclude_keywords=list(config.exclude_keywords),
        glossary=list(config.glossary),
        components=list(config.components),
        priority_rules=list(config.priority_rules),
        chats=sorted(chat.pk for chat in config.chats.all()),
        team=team_snapshot((m["user_id"], m["role"]) for m in config.team),
        default_assignee=config.default_assignee_id_snapshot,
        batch_time_gap_minutes=config.batch_time_gap_minutes,
        schedule=config.schedule,
        auto_approve_band=config.auto_approve_band,
        auto_approve_min_rate=config.auto_approve_min_rate,
        auto_approve_min_reviews=config.auto_approve_min_reviews,
    )


def live_team(project: Project) -> list[dict[str, Any]]:
    """The team as the memberships have it now (the admin may change them between versions)."""
    return team_snapshot(project.memberships.values_list("user_id", "role"))


def team_drifted(project: Project, config: ProjectConfig | None) -> bool:
    """Whether the memberships differ from the team the current version recorded (they
    were edited in the admin since); the next save records them in a new version."""
    if config is None:
        return False
    return team_snapshot((m["user_id"], m["role"]) for m in config.team) != live_team(project)


def editable_state(project: Project, config: ProjectConfig | None) -> ConfigState:
    """What an edit starts from: the current version, with the team and the default
    assignee as they are live (memberships and the project row), so a save records them."""
    state = config_state(config) if config is not None else default_state()
    state["team"] = live_team(project)
    state["default_assignee"] = project.default_assignee_id
    return state


# Versions


def parse_version(version: str) -> tuple[int, int, int]:
    """ "1.2.3" as (1, 2, 3); a `DomainError` for anything else."""
    parts = version.strip().removeprefix("v").split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise DomainError(f"{version!r} is not a version like 1.2.0.", code="invalid_version")
    major, minor, patch = (int(part) for part in parts)
    return major, minor, patch


def current_config(project: Project) -> ProjectConfig | None:
    return (
        ProjectConfig.objects.filter(project=project, is_current=True)
        .select_related("author")
        .prefetch_related("chats")
        .first()
    )


def config_history(project: Project) -> QuerySet[ProjectConfig]:
    """Every version of a project, newest first, with its author."""
    return (
        ProjectConfig.objects.filter(project=project)
        .select_related("author")
        .order_by("-major", "-minor", "-patch")
    )


def get_config_version(project: Project, version: str) -> ProjectConfig:
    major, minor, patch = parse_version(version)
    config = (
        ProjectConfig.objects.filter(project=project, major=major, minor=minor, patch=patch)
        .select_related("author")
        .prefetch_related("chats")
        .first()
    )
    if config is None:
        raise DomainError(f"{project} has no version {version}.", code="not_found", status=404)
    return config


# Diff


class FieldChange(NamedTuple):
    field: str
    old: Any
    new: Any


def diff_states(old: ConfigState, new: ConfigState) -> list[FieldChange]:
    # By name, as plain mappings: a TypedDict is read only with literal keys.
    before: Mapping[str, object] = old
    after: Mapping[str, object] = new
    return [
        FieldChange(name, before[name], after[name]) for name in CONFIG_FIELDS if before[name] != after[name]
    ]


def diff_configs(a: ProjectConfig, b: ProjectConfig) -> list[FieldChange]:
    """The fields that differ from version `a` to version `b`, in form order."""
    return diff_states(config_state(a), config_state(b))


@dataclass
class Line:
    text: str
    mark: str = ""  # "added" or "removed" where the other side lacks the line


@dataclass
class ComparedField:
    field: str
    label: str
    changed: bool
    # `dataclasses.field`: the bare name is the `field` attribute above.
    old: list[Line] = dataclasses.field(default_factory=list)
    new: list[Line] = dataclasses.field(default_factory=list)


def _deleted_user(user_id: int) -> str:
    return f"user {user_id} (deleted)"


def _display_lines(name: str, value: Any, users: dict[int, str], chats: dict[int, str]) -> list[str]:
    roles = dict(ProjectMembership.Role.choices)
    priorities = dict(Task.Priority.choices)
    if name == "glossary":
        return [f"{entry['term']}: {entry['meaning']}" for entry in value]
    if name == "components":
        return [f"{c['name']}: {', '.join(c.get('keywords', [])) or '(no keywords)'}" for c in value]
    if name == "priority_rules":
        return [f"{rule['when']} → {priorities.get(rule['priority'], rule['priority'])}" for rule in value]
    if name == "chats":
        return [chats.get(chat_id, f"chat {chat_id} (deleted)") for chat_id in value]
    if name == "team":
        return [
            f"{users.get(m['user_id']) or _deleted_user(m['user_id'])} ({roles.get(m['role'], m['role'])})"
            for m in value
        ]
    if name == "default_assignee":
        return [users.get(value) or _deleted_user(value)] if value is not None else []
    if isinstance(value, list):
        return [str(item) for item in value]
    return [str(value)] if value not in ("", None) else []


def compare_configs(a: ProjectConfig, b: ProjectConfig) -> list[ComparedField]:
    """Every field of two versions side by side, lines only one side has marked.

    Costs one query for the users named (the chats come prefetched with the versions).
    """
    old, new = config_state(a), config_state(b)
    user_ids = {m["user_id"] for state in (old, new) for m in state["team"]}
    user_ids |= {state["default_assignee"] for state in (old, new) if state["default_assignee"]}
    users = dict(get_user_model().objects.filter(pk__in=user_ids).values_list("pk", "username"))
    chats = {chat.pk: str(chat) for config in (a, b) for chat in config.chats.all()}
    # By name, as plain mappings: a TypedDict is read only with literal keys.
    before: Mapping[str, object] = old
    after: Mapping[str, object] = new
    compared = []
    for name in CONFIG_FIELDS:
        old_lines = _display_lines(name, before[name], users, chats)
        new_lines = _display_lines(name, after[name], users, chats)
        changed = before[name] != after[name]
        compared.append(
            ComparedField(
                field=name,
                label=FIELD_LABELS[name],
                changed=changed,
                old=[
                    Line(text, "removed" if changed and text not in new_lines else "") for text in old_lines
                ],
                new=[Line(text, "added" if changed and text not in old_lines else "") for text in new_lines],
            )
        )
    return compared


def versions_for_diff(project: Project, a: str, b: str) -> tuple[ProjectConfig, ProjectConfig]:
    """Two versions of a project in one query (chats in one more)."""
    wanted = [parse_version(a), parse_version(b)]
    condition = Q()
    for major, minor, patch in wanted:
        condition |= Q(major=major, minor=minor, patch=patch)
    found = {
        (c.major, c.minor, c.patch): c
        for c in ProjectConfig.objects.filter(condition, project=project)
        .select_related("author")
        .prefetch_related("chats")
    }
    missing = [".".join(map(str, v)) for v in wanted if v not in found]
    if missing:
        raise DomainError(f"{project} has no version {', '.join(missing)}.", code="not_found", status=404)
    return found[wanted[0]], found[wanted[1]]


# Projects and tasks, as a user may see them (`projects.access` says who sees what)


def projects_visible_to(user: AnyUser) -> QuerySet[Project]:
    """Projects a user is on (all for staff), with their current version, leads, member
    and open task counts: a constant number of queries however many projects."""
    open_tasks = (
        Task.objects.filter(project=OuterRef("pk"), status__in=OPEN_TASK_STATUSES)
        .order_by()
        .values("project")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        access.projects(user)
        .select_related("default_assignee")
        .annotate(member_count=Count("memberships", distinct=True), open_task_count=Subquery(open_tasks))
        .prefetch_related(
            Prefetch(
                "configs",
                queryset=ProjectConfig.objects.filter(is_current=True).select_related("author"),
                to_attr="current_configs",
            ),
            Prefetch(
                "memberships",
                queryset=ProjectMembership.objects.filter(role=ProjectMembership.Role.LEAD).select_related(
                    "user"
                ),
                to_attr="lead_memberships",
            ),
        )
        .order_by("name")
    )


def project_detail(user: AnyUser) -> QuerySet[Project]:
    """The projects a user sees, with their team (users joined) and default assignee, for
    one project's pages."""
    return (
        access.projects(user)
        .select_related("default_assignee")
        .prefetch_related(
            Prefetch(
                "memberships", queryset=ProjectMembership.objects.select_related("user").order_by("role")
            )
        )
    )


def open_tasks(project: Project) -> QuerySet[Task]:
    return (
        Task.objects.filter(project=project, status__in=OPEN_TASK_STATUSES)
        .select_related("assignee")
        .order_by("-created_at")
    )


def tasks_of_project(
    project: Project, *, status: str | None = None, assignee_id: int | None = None
) -> QuerySet[Task]:
    """A project's tasks for its task list (of one status or assignee when given), open
    ones first, then newest, with their assignee and source proposal: a constant number of
    queries."""
    tasks = Task.objects.filter(project=project).select_related("assignee")
    if status:
        tasks = tasks.filter(status=status)
    if assignee_id:
        tasks = tasks.filter(assignee_id=assignee_id)
    open_first = Case(When(status__in=OPEN_TASK_STATUSES, then=0), default=1)
    return tasks.order_by(open_first, "-created_at", "-pk")


def tasks_visible_to(user: AnyUser) -> QuerySet[Task]:
    """Tasks of the projects a user is on (all for staff)."""
    return access.scope(Task.objects.select_related("project", "assignee"), user)


def chat_choices(user: AnyUser | None, project: Project | None) -> QuerySet[Chat]:
    """The chats a user may choose for a project's configuration (`access.addable_chats`)."""
    return access.addable_chats(user, project).order_by("title", "telegram_id")


def calibrations(project: Project) -> list[dict[str, Any]]:
    """Its agents' confidence calibrations, oldest agent first (`analysis.calibration`
    stores them on the project when a run closes)."""
    agents = project.band_calibration.get("agents", {})
    return [agents[key] for key in sorted(agents, key=int)]

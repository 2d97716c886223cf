"""Who may see or change what: the one module that answers it.

Views, API views, admins, consumers, selectors and services ask here; none of them
compares a role or `is_staff` itself.

Roles are per project (`ProjectMembership.Role`); each may do all the one before it may:

- **member**: sees the project, the chats its current configuration reads and their
  messages, its runs, its proposals (read only) and its tasks; moves its tasks through
  their statuses and assigns them (`Action.VIEW`, `Action.CHANGE_TASKS`).
- **reviewer**: all a member may, and reviews the project's proposals: approve, edit,
  reject, merge, split, mark as duplicate, undo, reopen, one by one or in bulk
  (`Action.REVIEW`).
- **lead** (team lead): all a reviewer may, and edits the project's configuration and
  team (and its webhooks), starts, cancels, retries and closes its runs
  (`Action.CONFIGURE`, `Action.RUN`).

Staff (`is_staff`) may do everything on every project, and alone create projects and
change chats. An anonymous user may do nothing. A signed-in user with no membership of a
project sees nothing of it: its rows are left out of lists, and a page or API detail of
one answers 404, as if it did not exist. A 403 is kept for a row the user may see but
not change (a member approving a proposal of their project).

Chats and messages belong to no project. A chat, with its messages, is visible to the
members (any role) of the projects whose *current* configuration reads it, and to staff.
A lead may add to their project's configuration only chats that no project reads, or
that only projects they lead read (`addable_chats`); `projects.services.bump_config`
refuses any other, so every path that writes a configuration gets the rule.

`projects` imports neither `analysis` nor `proposals` (apps depend one way), so their
rows are narrowed with `scope`, given the path from a row to its project(s). The
`sources` app imports no other app either: its chat and message views are mounted by
`projects.chat_api` and `projects.admin`, which ask here.
"""

from collections.abc import Iterable
from enum import StrEnum
from typing import TypeGuard

from django.contrib.auth.models import User as SignedInUser
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models import QuerySet

from projects.models import Project, ProjectConfig, ProjectMembership
from sources.models import Chat, Message
from tasktracker.types import AnyUser

Role = ProjectMembership.Role


class Action(StrEnum):
    """What a user does to a project or to its rows."""

    VIEW = "view"
    CHANGE_TASKS = "change_tasks"
    REVIEW = "review"
    CONFIGURE = "configure"
    RUN = "run"


# The roles that allow each action, from the module docstring.
ROLES: dict[Action, frozenset[str]] = {
    Action.VIEW: frozenset({Role.MEMBER, Role.REVIEWER, Role.LEAD}),
    Action.CHANGE_TASKS: frozenset({Role.MEMBER, Role.REVIEWER, Role.LEAD}),
    Action.REVIEW: frozenset({Role.REVIEWER, Role.LEAD}),
    Action.CONFIGURE: frozenset({Role.LEAD}),
    Action.RUN: frozenset({Role.LEAD}),
}

ProjectRef = Project | int


def signed_in(user: AnyUser | None) -> TypeGuard[SignedInUser]:
    """Whether `user` is a signed-in user (for the type checker too: a `User`)."""
    return bool(user is not None and user.is_authenticated)


def is_staff(user: AnyUser | None) -> bool:
    return signed_in(user) and bool(user.is_staff)


def _memberships(user: SignedInUser, action: Action) -> QuerySet[ProjectMembership]:
    return ProjectMembership.objects.filter(user=user, role__in=ROLES[action])


def _project_id(project: ProjectRef) -> int:
    return project if isinstance(project, int) else project.pk


# Projects


def project_ids(user: AnyUser | None, action: Action = Action.VIEW) -> QuerySet:
    """Ids of the projects where `user` may do `action`, as a subquery for `__in` filters:
    every project for staff, none for an anonymous user."""
    if not signed_in(user):
        return Project.objects.none().values("pk")
    if user.is_staff:
        return Project.objects.values("pk")
    return _memberships(user, action).values("project_id")


def projects(user: AnyUser | None, action: Action = Action.VIEW) -> QuerySet[Project]:
    """The projects where `user` may do `action`."""
    return scope(Project.objects.all(), user, action, via="pk")


def can(user: AnyUser | None, project: ProjectRef, action: Action = Action.VIEW) -> bool:
    """Whether `user` may do `action` on one project."""
    if not signed_in(user):
        return False
    if user.is_staff:
        return True
    return _memberships(user, action).filter(project_id=_project_id(project)).exists()


def can_all(user: AnyUser | None, projects: Iterable[ProjectRef], action: Action) -> bool:
    """Whether `user` may do `action` on every one of `projects` (and there is one): what
    starting or operating a run over several projects takes."""
    wanted = {_project_id(project) for project in projects}
    if not wanted or not signed_in(user):
        return False
    if user.is_staff:
        return True
    allowed = _memberships(user, action).filter(project_id__in=wanted).values_list("project_id", flat=True)
    return wanted <= set(allowed)


def can_anywhere(user: AnyUser | None, action: Action) -> bool:
    """Whether `user` may do `action` on some project (staff: yes, once there is one)."""
    if not signed_in(user):
        return False
    return bool(user.is_staff) or _memberships(user, action).exists()


def can_create_projects(user: AnyUser | None) -> bool:
    return is_staff(user)


def reviewers(project_ids: Iterable[int] | QuerySet) -> QuerySet[ProjectMembership]:
    """The memberships that review the given projects' proposals (reviewers and leads), with
    their users and projects: who to ask for a review."""
    return (
        ProjectMembership.objects.filter(project_id__in=project_ids, role__in=ROLES[Action.REVIEW])
        .select_related("user", "project")
        .order_by("project__name", "user__username")
    )


# Rows of a project, in any app


def _many_valued(model: type[models.Model], path: str) -> bool:
    """Whether following `path` ("project", "projects", "endpoint__project") from `model`
    may reach several rows, so that a join would repeat the row."""
    for name in path.split("__"):
        if name == "pk":
            return False
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            return False
        if field.many_to_many or field.one_to_many:
            return True
        if field.related_model is None:
            return False
        model = field.related_model
    return False


def scope(
    queryset: QuerySet, user: AnyUser | None, action: Action = Action.VIEW, *, via: str = "project"
) -> QuerySet:
    """`queryset` narrowed to the rows of projects where `user` may do `action`.

    `via` is the path from a row to its project: "project" for tasks and proposals,
    "projects" for runs, "endpoint__project" for webhook deliveries, "pk" for projects.
    A row of several projects (a run) is kept when one of them allows `action`, and
    never repeated; operating a run takes all of them (`can_all`).
    """
    if not signed_in(user):
        return queryset.none()
    if user.is_staff:
        return queryset
    allowed = _memberships(user, action).values("project_id")
    lookup = f"{via}__in"
    if not _many_valued(queryset.model, via):
        return queryset.filter(**{lookup: allowed})
    # A subquery, not a join: the join would repeat a row once per project allowing it.
    return queryset.filter(pk__in=queryset.model._base_manager.filter(**{lookup: allowed}).values("pk"))


# Chats and messages


def _current_reads() -> QuerySet:
    """Which chat the current configuration of which project reads (the many-to-many rows)."""
    return ProjectConfig.chats.through.objects.filter(projectconfig__is_current=True)


def chat_ids(user: AnyUser | None) -> QuerySet:
    """Ids of the chats `user` sees, as a subquery: those the current configuration of a
    project they are on reads."""
    if not signed_in(user):
        return Chat.objects.none().values("pk")
    if user.is_staff:
        return Chat.objects.values("pk")
    on = _memberships(user, Action.VIEW).values("project_id")
    return _current_reads().filter(projectconfig__project_id__in=on).values("chat_id")


def visible_chats(user: AnyUser | None, queryset: QuerySet[Chat] | None = None) -> QuerySet[Chat]:
    chats = Chat.objects.all() if queryset is None else queryset
    if is_staff(user):
        return chats
    return chats.filter(pk__in=chat_ids(user))


def visible_messages(
    user: AnyUser | None, queryset: QuerySet | None = None, *, via: str = "chat"
) -> QuerySet:
    """Messages (or, with `via` the path to their chat, rows of messages such as their
    edits: "message__chat") of the chats `user` sees."""
    messages = Message.objects.all() if queryset is None else queryset
    if is_staff(user):
        return messages
    return messages.filter(**{f"{via}__in": chat_ids(user)})


def can_change_chats(user: AnyUser | None) -> bool:
    """Rename chats and switch them on or off: staff."""
    return is_staff(user)


def can_ingest_messages(user: AnyUser | None) -> bool:
    """Store messages through the API: staff, or an integration's user granted
    `sources.add_message`."""
    return is_staff(user) or (signed_in(user) and user.has_perm("sources.add_message"))


def addable_chats(user: AnyUser | None, project: Project | None) -> QuerySet[Chat]:
    """The chats `user` may have `project`'s configuration read: those no other project's
    current configuration reads, or only projects `user` leads read, and those `project`
    reads already. Every chat for staff, and for the system (`user` None)."""
    chats = Chat.objects.all()
    if user is None or is_staff(user):
        return chats
    if not signed_in(user):
        return chats.none()
    led = _memberships(user, Action.CONFIGURE).values("project_id")
    others = _current_reads().exclude(projectconfig__project_id__in=led)
    if project is not None and project.pk is not None:
        others = others.exclude(projectconfig__project_id=project.pk)
    return chats.exclude(pk__in=others.values("chat_id"))

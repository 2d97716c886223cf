"""Writes of the `projects` app: projects, their versioned configuration, and tasks.

A project's configuration is a chain of immutable `ProjectConfig` versions; `bump_config`
is the one function that adds a version (its docstring states the versioning rule).
Every validation error is a `DomainError` whose code is `invalid_<field>`, so forms and
the API put its message next to the field it is about (`error_field`).
"""

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils.text import slugify

from projects import access
from projects.models import Project, ProjectConfig, ProjectMembership, Task, WebhookEndpoint
from projects.schedules import parse_schedule
from projects.selectors import (
    CONFIG_FIELDS,
    FIELD_LABELS,
    ConfigState,
    FieldChange,
    config_state,
    default_state,
    diff_states,
    editable_state,
    get_config_version,
    team_snapshot,
)
from projects.webhooks import emit_webhook
from sources.models import Chat
from tasktracker.exceptions import DomainError

logger = logging.getLogger(__name__)

# The versioning rule (see `bump_config`): what the project reads or who is on it...
MAJOR_FIELDS = frozenset({"chats", "team"})
# ...what the analysis looks for...
MINOR_FIELDS = frozenset({"keywords", "exclude_keywords", "glossary", "components", "priority_rules"})
# ...and everything else (description, language, default assignee, batch time gap, schedule,
# the auto-approval rule).
PATCH_FIELDS = frozenset(CONFIG_FIELDS) - MAJOR_FIELDS - MINOR_FIELDS

MAX_KEYWORD_LENGTH = 100
MAX_BATCH_TIME_GAP_MINUTES = 7 * 24 * 60
# The auto-approval rule (proposals.services.auto): the bands it may take ("" is off), and
# the least it may ask of reviewers' record.
AUTO_APPROVE_BANDS = ("high", "medium")
MIN_AUTO_APPROVE_RATE = 0.5
MIN_AUTO_APPROVE_REVIEWS = 10
# `projects/new/` is the page that creates a project.
RESERVED_SLUGS = frozenset({"new"})
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")
_SPACES = re.compile(r"\s+")


# Validation: each function cleans one field or raises `DomainError(code="invalid_<field>")`.


def _invalid(field: str, message: str) -> DomainError:
    return DomainError(message, code=f"invalid_{field}")


def error_field(exc: DomainError) -> str | None:
    """The field a validation error (code `invalid_<field>`) is about; None for others."""
    name = exc.code.removeprefix("invalid_")
    return name if name != exc.code else None


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _invalid(field, f"{FIELD_LABELS.get(field, field)} must be text.")
    # Browsers send textareas with CRLF: without this, saving a form unchanged would
    # differ from a text written through the API and make a version.
    return value.replace("\r\n", "\n").replace("\r", "\n").strip()


def _entries(value: Any, field: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, Mapping) for v in value):
        raise _invalid(field, f"{FIELD_LABELS[field]} must be a list of objects.")
    return list(value)


def _ids(values: Any, field: str) -> list[int]:
    if not isinstance(values, list | tuple | set | frozenset):
        raise _invalid(field, f"{FIELD_LABELS[field]} must be a list.")
    ids = []
    for value in values:
        pk = getattr(value, "pk", value)
        if isinstance(pk, bool) or not isinstance(pk, int):
            raise _invalid(field, f"{pk!r} is not an id.")
        ids.append(pk)
    return ids


def clean_keywords(values: Any, *, field: str = "keywords") -> list[str]:
    """Keywords trimmed, lower-cased, inner spaces collapsed, each once in the order
    given; empty ones dropped."""
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise _invalid(field, "Keywords must be a list of texts.")
    cleaned: list[str] = []
    for value in values:
        keyword = _SPACES.sub(" ", value).strip().lower()
        if len(keyword) > MAX_KEYWORD_LENGTH:
            raise _invalid(field, f"“{keyword[:30]}…” is longer than {MAX_KEYWORD_LENGTH} characters.")
        if keyword and keyword not in cleaned:
            cleaned.append(keyword)
    return cleaned


def clean_language(value: Any) -> str:
    language = _text(value, "language").lower()
    if not _LANGUAGE.match(language):
        raise _invalid("language", f"“{language}” is not a language code such as en, de or pt-br.")
    return language


def clean_schedule(value: Any) -> str:
    """A five-field cron expression (minute hour day-of-month month day-of-week), or ""
    for no scheduled runs, its spaces collapsed. Checked by `parse_schedule`, which the
    scheduler reads it with."""
    expression = _SPACES.sub(" ", _text(value, "schedule"))
    if expression:
        parse_schedule(expression)
    return expression


def clean_batch_time_gap(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid("batch_time_gap_minutes", "The batch time gap must be a whole number of minutes.")
    if not 1 <= value <= MAX_BATCH_TIME_GAP_MINUTES:
        raise _invalid(
            "batch_time_gap_minutes",
            f"The batch time gap must be between 1 and {MAX_BATCH_TIME_GAP_MINUTES} minutes (a week).",
        )
    return value


def clean_auto_approve_band(value: Any) -> str:
    band = _text(value, "auto_approve_band").lower()
    if band and band not in AUTO_APPROVE_BANDS:
        raise _invalid(
            "auto_approve_band", f"“{band}” is not a band auto-approval may take; use high, medium or none."
        )
    return band


def clean_auto_approve_min_rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid("auto_approve_min_rate", "The minimum approval rate must be a number.")
    if not MIN_AUTO_APPROVE_RATE <= value <= 1:
        raise _invalid(
            "auto_approve_min_rate",
            f"The minimum approval rate must be between {MIN_AUTO_APPROVE_RATE} and 1.",
        )
    return float(value)


def clean_auto_approve_min_reviews(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid("auto_approve_min_reviews", "The minimum number of reviews must be a whole number.")
    if value < MIN_AUTO_APPROVE_REVIEWS:
        raise _invalid(
            "auto_approve_min_reviews",
            f"Auto-approval needs at least {MIN_AUTO_APPROVE_REVIEWS} reviews to go by.",
        )
    return value


def clean_glossary(value: Any) -> list[dict[str, str]]:
    glossary: list[dict[str, str]] = []
    seen: set[str] = set()
    for entry in _entries(value, "glossary"):
        term = _SPACES.sub(" ", _text(entry.get("term", ""), "glossary"))
        meaning = _text(entry.get("meaning", ""), "glossary")
        if not term or not meaning:
            raise _invalid("glossary", "Each glossary entry needs a term and its meaning.")
        if term.casefold() in seen:
            raise _invalid("glossary", f"The glossary has “{term}” twice.")
        seen.add(term.casefold())
        glossary.append({"term": term, "meaning": meaning})
    return glossary


def clean_components(value: Any) -> list[dict[str, Any]]:
    components: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in _entries(value, "components"):
        name = _SPACES.sub(" ", _text(entry.get("name", ""), "components"))
        if not name:
            raise _invalid("components", "Each component needs a name.")
        if name.casefold() in seen:
            raise _invalid("components", f"There are two components named “{name}”.")
        seen.add(name.casefold())
        keywords = clean_keywords(entry.get("keywords", []), field="components")
        components.append({"name": name, "keywords": keywords})
    return components


def clean_priority_rules(value: Any) -> list[dict[str, str]]:
    rules: list[dict[str, str]] = []
    for entry in _entries(value, "priority_rules"):
        when = _SPACES.sub(" ", _text(entry.get("when", ""), "priority_rules"))
        priority = entry.get("priority")
        if not when:
            raise _invalid("priority_rules", "Each priority rule needs a condition (when).")
        if priority not in Task.Priority.values:
            raise _invalid(
                "priority_rules",
                f"{priority!r} is not a priority; use one of {', '.join(Task.Priority.values)}.",
            )
        rules.append({"when": when, "priority": priority})
    return rules


def clean_chats(value: Any) -> list[int]:
    ids = sorted(set(_ids(value, "chats")))
    known = set(Chat.objects.filter(pk__in=ids).values_list("pk", flat=True))
    if unknown := [pk for pk in ids if pk not in known]:
        raise _invalid("chats", f"There is no chat {', '.join(map(str, unknown))}.")
    return ids


def check_chats_allowed(*, user: User | None, project: Project, chats: Iterable[int]) -> None:
    """Refuse (`invalid_chats`) chats `user` may not add to `project`'s configuration: one
    another project reads, unless `user` leads every project that reads it (staff and the
    system, `user` None, may add any; see `access.addable_chats`)."""
    wanted = set(chats)
    if not wanted:
        return
    allowed = set(access.addable_chats(user, project).filter(pk__in=wanted).values_list("pk", flat=True))
    if refused := sorted(wanted - allowed):
        chat_list = ", ".join(map(str, refused))
        raise _invalid(
            "chats",
            f"You cannot add chat {chat_list}: a project you do not lead reads it. Its team leads or "
            "staff can.",
        )


def clean_team(value: Any) -> list[dict[str, Any]]:
    """Members by user id, each once, roles lead, reviewer or member, at least one lead."""
    members: dict[int, str] = {}
    for entry in _entries(value, "team"):
        user_id = getattr(entry.get("user"), "pk", entry.get("user_id"))
        [user_id] = _ids([user_id], "team")
        role = entry.get("role", ProjectMembership.Role.MEMBER)
        if role not in ProjectMembership.Role.values:
            roles = ", ".join(ProjectMembership.Role.values)
            raise _invalid("team", f"{role!r} is not a role; use one of {roles}.")
        if user_id in members:
            raise _invalid("team", "Each person can be on the team once.")
        members[user_id] = role
    known = set(get_user_model().objects.filter(pk__in=members).values_list("pk", flat=True))
    if unknown := [pk for pk in members if pk not in known]:
        raise _invalid("team", f"There is no user {', '.join(map(str, unknown))}.")
    if ProjectMembership.Role.LEAD not in members.values():
        raise _invalid("team", "The team needs at least one team lead.")
    return team_snapshot(members.items())


def clean_default_assignee(value: Any, team: list[dict[str, Any]]) -> int | None:
    if value is None or value == "":
        return None
    [user_id] = _ids([value], "default_assignee")
    if user_id not in {m["user_id"] for m in team}:
        raise _invalid("default_assignee", "The default assignee must be on the team.")
    return user_id


def clean_config(state: Mapping[str, Any]) -> ConfigState:
    """A whole configuration checked and normalised, as a version stores it."""
    team = clean_team(state["team"])
    return ConfigState(
        description=_text(state["description"], "description"),
        language=clean_language(state["language"]),
        keywords=clean_keywords(state["keywords"]),
        exclude_keywords=clean_keywords(state["exclude_keywords"], field="exclude_keywords"),
        glossary=clean_glossary(state["glossary"]),
        components=clean_components(state["components"]),
        priority_rules=clean_priority_rules(state["priority_rules"]),
        chats=clean_chats(state["chats"]),
        team=team,
        default_assignee=clean_default_assignee(state["default_assignee"], team),
        batch_time_gap_minutes=clean_batch_time_gap(state["batch_time_gap_minutes"]),
        schedule=clean_schedule(state["schedule"]),
        auto_approve_band=clean_auto_approve_band(state["auto_approve_band"]),
        auto_approve_min_rate=clean_auto_approve_min_rate(state["auto_approve_min_rate"]),
        auto_approve_min_reviews=clean_auto_approve_min_reviews(state["auto_approve_min_reviews"]),
    )


# Versions


def bump_level(changes: Iterable[FieldChange]) -> str | None:
    """ "major", "minor" or "patch" for a set of changed fields; None when nothing changed."""
    fields = {change.field for change in changes}
    if fields & MAJOR_FIELDS:
        return "major"
    if fields & MINOR_FIELDS:
        return "minor"
    return "patch" if fields else None


def _next_version(project: Project, level: str) -> tuple[int, int, int]:
    latest = ProjectConfig.objects.filter(project=project).order_by("-major", "-minor", "-patch").first()
    if latest is None:
        return 1, 0, 0
    major, minor, patch = latest.major, latest.minor, latest.patch
    if level == "major":
        return major + 1, 0, 0
    if level == "minor":
        return major, minor + 1, 0
    return major, minor, patch + 1


def _summary(changes: list[FieldChange], given: str) -> str:
    given = _SPACES.sub(" ", given).strip()
    if given:
        return given[:500]
    return "Changed " + ", ".join(FIELD_LABELS[c.field].lower() for c in changes) + "."


def _apply_team(project: Project, team: list[dict[str, Any]], default_assignee: int | None) -> None:
    """Make the live memberships and the default assignee what the new version says."""
    roles = {m["user_id"]: m["role"] for m in team}
    memberships = {m.user_id: m for m in project.memberships.all()}
    project.memberships.exclude(user_id__in=roles).delete()
    for user_id, role in roles.items():
        membership = memberships.get(user_id)
        if membership is None:
            ProjectMembership.objects.create(project=project, user_id=user_id, role=role)
        elif membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
    if project.default_assignee_id != default_assignee:
        project.default_assignee_id = default_assignee
        project.save(update_fields=["default_assignee", "updated_at"])


@transaction.atomic
def bump_config(
    *,
    project: Project,
    user: User | None,
    changes: Mapping[str, Any],
    summary: str = "",
    base_version: str | None = None,
) -> ProjectConfig | None:
    """Save `changes` (some of `CONFIG_FIELDS`) as a new current version, or return None
    when they change nothing.

    The versioning rule, compared with the current version:
    - **major** (2.0.0) when what the project reads or who is on it changes: `chats`, `team`;
    - **minor** (1.1.0) when what the analysis looks for changes: `keywords`,
      `exclude_keywords`, `glossary`, `components`, `priority_rules`;
    - **patch** (1.0.1) for any other edit: `description`, `language`, `default_assignee`,
      `batch_time_gap_minutes`, `schedule`, the `auto_approve_*` rule.
    The biggest change wins; the version counts up from the project's highest one. A
    project without any version gets 1.0.0.

    Fields not in `changes` keep their value, except the team and the default assignee,
    which start from the live memberships and project row: those can change in the admin
    between versions, and the new version records them as they are. The new version is
    applied back to the memberships and `Project.default_assignee`.

    Chats the version did not read before must be ones `user` may add
    (`check_chats_allowed`): a chat another project reads takes a lead of that project too.

    Locks the project row, so two concurrent saves get consecutive versions (the second
    compares with the first). With `base_version`, refuses (409) when the current version
    is no longer that one: the editor saw an older version and would undo a newer save.
    """
    unknown = sorted(set(changes) - set(CONFIG_FIELDS))
    if unknown:
        raise DomainError(f"Not configuration fields: {', '.join(unknown)}.", code="unknown_fields")
    project = Project.objects.select_for_update().get(pk=project.pk)
    current = ProjectConfig.objects.filter(project=project, is_current=True).prefetch_related("chats").first()
    if base_version is not None and current is not None and current.version != base_version:
        raise DomainError(
            f"Someone saved v{current.version} after you opened v{base_version}; reload the page "
            "and make your change again.",
            code="stale_version",
            status=409,
        )
    new = clean_config({**editable_state(project, current), **changes})
    old = config_state(current) if current is not None else default_state()
    check_chats_allowed(user=user, project=project, chats=set(new["chats"]) - set(old["chats"]))
    changed = diff_states(old, new)
    if current is not None and not changed:
        return None
    # Without a current version this is the project's first: 1.0.0 (`_next_version` of none).
    level = bump_level(changed) if current is not None else "major"
    major, minor, patch = _next_version(project, level or "major")
    if current is not None:
        # Before the insert: the database allows one current version per project.
        ProjectConfig.objects.filter(pk=current.pk).update(is_current=False)
    config = ProjectConfig.objects.create(
        project=project,
        major=major,
        minor=minor,
        patch=patch,
        is_current=True,
        description=new["description"],
        language=new["language"],
        keywords=new["keywords"],
        exclude_keywords=new["exclude_keywords"],
        glossary=new["glossary"],
        components=new["components"],
        priority_rules=new["priority_rules"],
        team=new["team"],
        default_assignee_id_snapshot=new["default_assignee"],
        batch_time_gap_minutes=new["batch_time_gap_minutes"],
        schedule=new["schedule"],
        auto_approve_band=new["auto_approve_band"],
        auto_approve_min_rate=new["auto_approve_min_rate"],
        auto_approve_min_reviews=new["auto_approve_min_reviews"],
        author=user if user is not None and user.is_authenticated else None,
        change_summary=_summary(changed, summary) if current is not None else (summary or "First version."),
    )
    config.chats.set(new["chats"])
    _apply_team(project, new["team"], new["default_assignee"])
    return config


@transaction.atomic
def rollback_config(*, project: Project, version: str, user: User | None) -> ProjectConfig:
    """Make a new version equal to an old one (versions never change, so a rollback is a
    save). Its number follows the rule of `bump_config` from the current version. Users
    deleted since are left out and named in the summary (deleted chats are gone from the
    old version's `chats` already)."""
    old = get_config_version(project, version)
    state = config_state(old)
    live_users = set(
        get_user_model()
        .objects.filter(pk__in=[m["user_id"] for m in state["team"]])
        .values_list("pk", flat=True)
    )
    gone = [m["user_id"] for m in state["team"] if m["user_id"] not in live_users]
    state["team"] = [m for m in state["team"] if m["user_id"] in live_users]
    if state["default_assignee"] not in live_users:
        state["default_assignee"] = None
    summary = f"Rolled back to v{old.version}."
    if gone:
        summary += f" Deleted users left out: {', '.join(map(str, gone))}."
    config = bump_config(project=project, user=user, changes=state, summary=summary)
    if config is None:
        raise DomainError(f"v{old.version} is the current configuration already.", code="no_change")
    return config


def _clean_name_and_slug(name: str, slug: str, *, project: Project | None = None) -> tuple[str, str]:
    """A project's name (spaces folded) and slug (from the name when blank), refused with a
    reason when blank, malformed, reserved or another project's."""
    name = _SPACES.sub(" ", name).strip()
    slug = slug.strip() or slugify(name)
    if not name:
        raise DomainError("A project needs a name.", code="invalid_name")
    if not slug:
        raise DomainError("Give a slug: letters, digits and hyphens.", code="invalid_slug")
    if slugify(slug) != slug or slug in RESERVED_SLUGS:
        raise DomainError(
            f"“{slug}” cannot be a slug: use lower-case letters, digits and hyphens (not “new”).",
            code="invalid_slug",
        )
    others = Project.objects.exclude(pk=project.pk) if project is not None else Project.objects.all()
    if others.filter(name__iexact=name).exists():
        raise DomainError(f"There is a project named {name} already.", code="invalid_name")
    if others.filter(slug=slug).exists():
        raise DomainError(f"The slug {slug} is taken.", code="invalid_slug")
    return name, slug


@transaction.atomic
def create_project(
    *,
    name: str,
    slug: str,
    user: User,
    changes: Mapping[str, Any] | None = None,
    summary: str = "",
) -> Project:
    """Create a project and its first version, 1.0.0. Its creator is on the team as a
    team lead, whatever role `changes["team"]` gives them."""
    name, slug = _clean_name_and_slug(name, slug)
    changes = dict(changes or {})
    team = [m for m in changes.get("team", []) if getattr(m.get("user"), "pk", m.get("user_id")) != user.pk]
    changes["team"] = [*team, {"user_id": user.pk, "role": ProjectMembership.Role.LEAD}]
    project = Project.objects.create(name=name, slug=slug)
    bump_config(project=project, user=user, changes=changes, summary=summary or "Project created.")
    project.refresh_from_db()
    return project


@transaction.atomic
def update_project(
    *,
    project: Project,
    user: User,
    name: str | None = None,
    slug: str | None = None,
    is_active: bool | None = None,
) -> Project:
    """Rename a project, change its slug or switch it on or off (what is not versioned: the
    configuration is, through `bump_config`). Team leads and staff (`access.Action.CONFIGURE`);
    the name and slug are checked as `create_project` checks them. Locks the project row."""
    if not access.can(user, project.pk, access.Action.CONFIGURE):
        raise DomainError("Only the project's team leads can change it.", code="forbidden", status=403)
    locked = Project.objects.select_for_update().get(pk=project.pk)
    locked.name, locked.slug = _clean_name_and_slug(
        locked.name if name is None else name, locked.slug if slug is None else slug, project=locked
    )
    if is_active is not None:
        locked.is_active = is_active
    locked.save(update_fields=["name", "slug", "is_active", "updated_at"])
    logger.info("%s changed project %s", user, locked.pk)
    return locked


# Tasks

TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    Task.Status.OPEN: frozenset({Task.Status.IN_PROGRESS, Task.Status.DONE, Task.Status.CANCELLED}),
    Task.Status.IN_PROGRESS: frozenset({Task.Status.OPEN, Task.Status.DONE, Task.Status.CANCELLED}),
    Task.Status.DONE: frozenset({Task.Status.OPEN}),
    Task.Status.CANCELLED: frozenset({Task.Status.OPEN}),
}


class _Unset:
    """`assignee` not given, as opposed to None (unassign)."""


UNSET = _Unset()


def _check_may_change_tasks(user: User, project_id: int) -> None:
    if not access.can(user, project_id, access.Action.CHANGE_TASKS):
        raise DomainError("Only the project's team can change its tasks.", code="forbidden", status=403)


def check_task_change(
    *, task: Task, user: User, status: str | None = None, assignee: User | _Unset | None = UNSET
) -> list[str]:
    """The fields a change of `task` would write, after checking it: who may (the project's
    team and staff, `access.Action.CHANGE_TASKS`), the move along `TASK_TRANSITIONS`, the
    assignee on the team. Raises `DomainError` with the reason; writes nothing. `update_task`
    applies it; the admin's task form checks its changes with it."""
    _check_may_change_tasks(user, task.project_id)
    fields = []
    if status is not None and status != task.status:
        if status not in TASK_TRANSITIONS:
            raise DomainError(f"{status!r} is not a task status.", code="invalid_status")
        if status not in TASK_TRANSITIONS[task.status]:
            raise DomainError(
                f"A {task.get_status_display().lower()} task cannot become {status}; reopen it first.",
                code="illegal_transition",
                status=409,
            )
        fields.append("status")
    if not isinstance(assignee, _Unset):
        assignee_id = assignee.pk if assignee is not None else None
        if assignee_id is not None and not task.project.memberships.filter(user_id=assignee_id).exists():
            raise DomainError(f"{assignee} is not on the team of {task.project}.", code="invalid_assignee")
        if assignee_id != task.assignee_id:
            fields.append("assignee")
    return fields


def _check_task_details(*, title: str | None, priority: str | None, category: str | None) -> None:
    """A task's title must not be blank, and its priority and category must be a task's: a
    task config's own schema may let a proposal carry others, which are refused here with a
    reason rather than by the database. None: not being changed."""
    if title is not None and not title.strip():
        raise _invalid("title", "A task needs a title.")
    for field, value, choices in (
        ("priority", priority, Task.Priority),
        ("category", category, Task.Category),
    ):
        if value is not None and value not in choices.values:
            raise _invalid(field, f"“{value}” is not a task {field}; use one of {', '.join(choices.values)}.")


# A task's fields other than its status and assignee, which `update_task` writes as given
# (after `_check_task_details`).
TASK_DETAILS = ("title", "description", "priority", "category", "tags", "due_date")


@transaction.atomic
def update_task(
    *,
    task: Task,
    user: User,
    status: str | None = None,
    assignee: User | _Unset | None = UNSET,
    **details: Any,
) -> Task:
    """Move a task to another status (only along `TASK_TRANSITIONS`; a done or cancelled
    task is reopened first) and/or assign it to someone on its project's team, or to
    nobody with `assignee=None` (`check_task_change`), and/or change its `TASK_DETAILS`
    (checked as `create_task` checks them). Locks the task row; a status change sends the
    `task.status_changed` webhook."""
    unknown = set(details) - set(TASK_DETAILS)
    if unknown:
        raise TypeError(f"update_task() got unexpected fields {sorted(unknown)}")
    task = Task.objects.select_for_update().select_related("project").get(pk=task.pk)
    fields = check_task_change(task=task, user=user, status=status, assignee=assignee)
    _check_task_details(
        title=details.get("title"), priority=details.get("priority"), category=details.get("category")
    )
    if status is not None and "status" in fields:
        logger.info("%s moved task %s from %s to %s", user, task.pk, task.status, status)
        task.status = status
    if not isinstance(assignee, _Unset) and "assignee" in fields:
        task.assignee_id = assignee.pk if assignee is not None else None
    changed = [name for name, value in details.items() if getattr(task, name) != value]
    for name in changed:
        setattr(task, name, details[name])
    fields += changed
    if fields:
        task.save(update_fields=[*fields, "updated_at"])
    if "status" in fields:
        emit_webhook(
            project=task.project, event=WebhookEndpoint.Event.TASK_STATUS_CHANGED, payload=task_payload(task)
        )
    return task


@transaction.atomic
def create_task(
    *,
    project: Project,
    title: str,
    created_by: User | None,
    description: str = "",
    assignee: User | None = None,
    priority: str = Task.Priority.MEDIUM,
    category: str = Task.Category.FEATURE,
    tags: Sequence[str] = (),
    due_date: date | None = None,
) -> Task:
    """Create an open task of `project`, e.g. the task an approved proposal becomes.

    `created_by` must be on the project's team (or staff: `access.Action.CHANGE_TASKS`), or
    None for the system (an auto-approval, `proposals.services.auto`); its title, priority
    and category are checked (`_check_task_details`). The assignee is taken as given (an
    approval keeps the proposal's suggestion)."""
    if created_by is not None:
        _check_may_change_tasks(created_by, project.pk)
    _check_task_details(title=title, priority=priority, category=category)
    task = Task.objects.create(
        project=project,
        title=title,
        description=description,
        assignee=assignee,
        priority=priority,
        category=category,
        tags=list(tags),
        due_date=due_date,
        created_by=created_by,
    )
    logger.info("%s created task %s in %s", created_by or "The system", task.pk, project)
    return task


@transaction.atomic
def append_to_task(*, task: Task, text: str, user: User) -> Task:
    """Add `text` to the end of a task's description as a paragraph of its own (a proposal
    approved as an addition to the task it repeats). Locks the task row and appends to the
    stored description, not to `task`'s copy, so two additions at once both stay. A task
    deleted meanwhile (`delete_task_if_unused`) is a 404."""
    _check_may_change_tasks(user, task.project_id)
    locked = (
        # Lock the task row only, not its project's.
        Task.objects.select_for_update(of=("self",)).select_related("project").filter(pk=task.pk).first()
    )
    if locked is None:
        raise DomainError(f"Task #{task.pk} no longer exists.", code="not_found", status=404)
    locked.description = f"{locked.description}\n\n{text}"
    locked.save(update_fields=["description", "updated_at"])
    logger.info("%s added to task %s", user, locked.pk)
    return locked


@transaction.atomic
def delete_task_if_unused(*, task: Task, user: User) -> bool:
    """Delete a task no proposal became or was added to any more (the `proposals` that
    `TaskProposal.task` links), e.g. the one an approval made once the approval is undone;
    return whether it was deleted. Locks the task row like `append_to_task`, so a proposal
    being added to it at the same moment either keeps it or finds it gone."""
    _check_may_change_tasks(user, task.project_id)
    locked = Task.objects.select_for_update().filter(pk=task.pk).first()
    if locked is None or locked.proposals.exists():
        return False
    locked.delete()
    logger.info("%s deleted task %s, which nothing used any more", user, task.pk)
    return True


def task_payload(task: Task) -> dict[str, Any]:
    """What integrations receive about a task."""
    return {
        "task": {
            "id": task.pk,
            "project": task.project.slug,
            "title": task.title,
            "description": task.description,
            "status": task.status,
            "priority": task.priority,
            "category": task.category,
            "tags": task.tags,
            "due_date": task.due_date.isoformat() if task.due_date else None,
            "assignee": task.assignee.get_username() if task.assignee is not None else None,
        }
    }

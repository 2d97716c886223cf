"""The team lead's configuration forms: one form for the fields, formsets for the lists.

Validation rules live in `projects.services` (the API uses the same ones); the forms call
them so each message shows next to its field. A formset row left entirely blank is
dropped, so clearing a row removes it as ticking "Remove" does.
"""

import re
from typing import Any, cast

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.http import QueryDict

from projects.models import Project, ProjectConfig, ProjectMembership, Task
from projects.selectors import chat_choices, editable_state
from projects.services import (
    AUTO_APPROVE_BANDS,
    MAX_BATCH_TIME_GAP_MINUTES,
    MIN_AUTO_APPROVE_RATE,
    MIN_AUTO_APPROVE_REVIEWS,
    clean_keywords,
    clean_language,
    clean_schedule,
    clean_team,
    error_field,
)
from sources.models import Chat
from tasktracker.exceptions import DomainError
from tasktracker.types import AnyUser

_SEPARATORS = re.compile(r"[,\n]")
# (user id, label), after a blank ("", "---------") first choice.
UserChoices = list[tuple[int | str, str]]


def _validation_error(exc: DomainError) -> ValidationError:
    return ValidationError(exc.message, code=exc.code)


def user_choices(include_ids: set[int]) -> UserChoices:
    """Active users (and anyone already included, active or not), built once per page:
    every row of the team formset shares them instead of querying again."""
    users = get_user_model().objects.filter(Q(is_active=True) | Q(pk__in=include_ids)).order_by("username")
    choices: UserChoices = [("", "---------")]
    for user in users:
        full_name = user.get_full_name()
        choices.append((user.pk, f"{full_name} ({user.username})" if full_name else user.username))
    return choices


class KeywordsField(forms.Field):
    """A list of keywords typed as text, separated by commas or new lines."""

    widget = forms.Textarea(attrs={"rows": 2})

    def __init__(self, *, error_field_name: str = "keywords", **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)
        self.error_field_name = error_field_name

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:
        if not value:
            return []
        parts = value if isinstance(value, list) else _SEPARATORS.split(value)
        try:
            return clean_keywords(parts, field=self.error_field_name)
        except DomainError as exc:
            raise _validation_error(exc) from exc


class ProjectConfigForm(forms.Form):
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        help_text="What the project is about, in a few sentences; given to the LLM.",
    )
    language = forms.CharField(
        max_length=16, help_text="The language of the chats and of the tasks, e.g. en, de, pt-br."
    )
    keywords = KeywordsField(
        help_text="Separated by commas or new lines. Short messages naming one are kept for the analysis."
    )
    exclude_keywords = KeywordsField(
        error_field_name="exclude_keywords",
        help_text="Messages naming one of these are left out of the analysis.",
    )
    # Any chat may be posted, and `bump_config` says which the user may add (one message
    # for the page and the API); the boxes offer only those (`__init__`).
    chats = forms.ModelMultipleChoiceField(
        queryset=Chat.objects.all(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The Telegram chats the project's analysis reads.",
    )
    default_assignee = forms.TypedChoiceField(
        coerce=int,
        empty_value=None,
        required=False,
        help_text="Gets the tasks nobody else is suggested for. Must be on the team.",
    )
    batch_time_gap_minutes = forms.IntegerField(
        min_value=1,
        max_value=MAX_BATCH_TIME_GAP_MINUTES,
        label="Batch time gap (minutes)",
        help_text="A silence this long between messages starts a new batch.",
    )
    schedule = forms.CharField(
        max_length=64,
        required=False,
        help_text="Cron expression for scheduled runs (minute hour day month weekday), "
        "e.g. 0 9 * * 1-5; empty for none.",
    )
    auto_approve_band = forms.ChoiceField(
        choices=[("", "Off"), *((band, band.capitalize()) for band in AUTO_APPROVE_BANDS)],
        required=False,
        label="Auto-approve band",
        help_text="Approve new-task proposals of this band that repeat nothing, while reviewers' "
        "record in the band allows it (below).",
    )
    auto_approve_min_rate = forms.FloatField(
        min_value=MIN_AUTO_APPROVE_RATE,
        max_value=1,
        label="Auto-approve minimum approval rate",
        help_text="The share of the band's last reviews that reviewers approved, from 0.5 to 1.",
    )
    auto_approve_min_reviews = forms.IntegerField(
        min_value=MIN_AUTO_APPROVE_REVIEWS,
        label="Auto-approve over the last reviews",
        help_text="How many of the band's last reviews by people the rate is taken over (at least 10).",
    )
    summary = forms.CharField(
        max_length=500,
        required=False,
        label="Change summary",
        help_text="What you changed and why; left empty, the changed fields are listed.",
    )
    base_version = forms.CharField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args: Any, user_choices: UserChoices, chats: QuerySet[Chat], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.TypedChoiceField, self.fields["default_assignee"]).choices = user_choices
        self.fields["chats"].widget.choices = [(chat.pk, str(chat)) for chat in chats]

    def clean_language(self) -> str:
        try:
            return clean_language(self.cleaned_data["language"])
        except DomainError as exc:
            raise _validation_error(exc) from exc

    def clean_schedule(self) -> str:
        try:
            return clean_schedule(self.cleaned_data["schedule"])
        except DomainError as exc:
            raise _validation_error(exc) from exc


class RowForm(forms.Form):
    """A formset row: blank is no row; partly filled, the missing fields are errors."""

    required_fields: tuple[str, ...] = ()

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        filled = [name for name in self.required_fields if cleaned.get(name) not in (None, "", [])]
        if filled:
            for name in self.required_fields:
                if name not in filled and name not in self.errors:
                    self.add_error(name, "Fill this in, or clear the row.")
        return cleaned

    def is_blank(self) -> bool:
        return all(self.cleaned_data.get(name) in (None, "", []) for name in self.required_fields)


class GlossaryEntryForm(RowForm):
    required_fields = ("term", "meaning")
    term = forms.CharField(max_length=200, required=False)
    # A textarea keeps the line breaks a meaning may have (an input would drop them).
    meaning = forms.CharField(max_length=1000, required=False, widget=forms.Textarea(attrs={"rows": 2}))


class ComponentForm(RowForm):
    required_fields = ("name",)
    name = forms.CharField(max_length=200, required=False)
    keywords = KeywordsField(
        error_field_name="components", widget=forms.TextInput, help_text="Comma separated."
    )


class PriorityRuleForm(RowForm):
    required_fields = ("when",)
    when = forms.CharField(max_length=500, required=False, label="When")
    priority = forms.ChoiceField(choices=Task.Priority.choices, initial=Task.Priority.HIGH)


class TeamMemberForm(RowForm):
    required_fields = ("user",)
    user = forms.TypedChoiceField(coerce=int, empty_value=None, required=False)
    role = forms.ChoiceField(choices=ProjectMembership.Role.choices, initial=ProjectMembership.Role.MEMBER)

    def __init__(self, *args: Any, user_choices: UserChoices, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.TypedChoiceField, self.fields["user"]).choices = user_choices


class RowFormSet(forms.BaseFormSet):
    def rows(self) -> list[dict[str, Any]]:
        """The filled rows not marked for removal, in order."""
        return [
            {name: value for name, value in form.cleaned_data.items() if name != "DELETE"}
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE") and not form.is_blank()
        ]


class TeamFormSet(RowFormSet):
    def clean(self) -> None:
        if any(self.errors):
            return
        try:
            clean_team([{"user_id": row["user"], "role": row["role"]} for row in self.rows()])
        except DomainError as exc:
            raise _validation_error(exc) from exc


def _formset(form: type[RowForm], formset: type[RowFormSet] = RowFormSet) -> type[RowFormSet]:
    # `formset_factory` makes a subclass of `formset`, which its stub forgets.
    return cast(type[RowFormSet], forms.formset_factory(form, formset=formset, extra=2, can_delete=True))


GlossaryFormSet = _formset(GlossaryEntryForm)
ComponentFormSet = _formset(ComponentForm)
PriorityRuleFormSet = _formset(PriorityRuleForm)
TeamMemberFormSet = _formset(TeamMemberForm, TeamFormSet)


class ConfigEditor:
    """The edit page's form and formsets, bound and validated together.

    Starts from `editable_state`: the current version, with the live team and default
    assignee. `changes()` is the whole configuration, for `bump_config`.
    """

    def __init__(
        self,
        *,
        project: Project,
        config: ProjectConfig | None,
        user: AnyUser,
        data: QueryDict | None = None,
    ) -> None:
        state = editable_state(project, config)
        choices = user_choices({m["user_id"] for m in state["team"]})
        self.form = ProjectConfigForm(
            data,
            user_choices=choices,
            # Only chats the user may add are offered (with those read already): the titles
            # of the others are not theirs to see.
            chats=chat_choices(user, project),
            initial={
                "description": state["description"],
                "language": state["language"],
                "keywords": state["keywords"],
                "exclude_keywords": state["exclude_keywords"],
                "chats": state["chats"],
                "default_assignee": state["default_assignee"],
                "batch_time_gap_minutes": state["batch_time_gap_minutes"],
                "schedule": state["schedule"],
                "auto_approve_band": state["auto_approve_band"],
                "auto_approve_min_rate": state["auto_approve_min_rate"],
                "auto_approve_min_reviews": state["auto_approve_min_reviews"],
                "base_version": config.version if config is not None else "",
            },
        )
        self.glossary = GlossaryFormSet(data, initial=state["glossary"], prefix="glossary")
        self.components = ComponentFormSet(data, initial=state["components"], prefix="components")
        self.priority_rules = PriorityRuleFormSet(
            data, initial=state["priority_rules"], prefix="priority_rules"
        )
        self.team = TeamMemberFormSet(
            data,
            initial=[{"user": m["user_id"], "role": m["role"]} for m in state["team"]],
            prefix="team",
            form_kwargs={"user_choices": choices},
        )
        self.formsets: dict[str, forms.BaseFormSet] = {
            "glossary": self.glossary,
            "components": self.components,
            "priority_rules": self.priority_rules,
            "team": self.team,
        }

    def is_valid(self) -> bool:
        # Every part is validated, so all errors show at once.
        results = [self.form.is_valid(), *(formset.is_valid() for formset in self.formsets.values())]
        return all(results)

    @property
    def has_errors(self) -> bool:
        return bool(self.form.errors) or any(
            formset.total_error_count() for formset in self.formsets.values()
        )

    @property
    def summary(self) -> str:
        return self.form.cleaned_data.get("summary", "")

    @property
    def base_version(self) -> str | None:
        return self.form.cleaned_data.get("base_version") or None

    def changes(self) -> dict[str, Any]:
        data = self.form.cleaned_data
        return {
            "description": data["description"],
            "language": data["language"],
            "keywords": data["keywords"],
            "exclude_keywords": data["exclude_keywords"],
            "chats": [chat.pk for chat in data["chats"]],
            "default_assignee": data["default_assignee"],
            "batch_time_gap_minutes": data["batch_time_gap_minutes"],
            "schedule": data["schedule"],
            "auto_approve_band": data["auto_approve_band"],
            "auto_approve_min_rate": data["auto_approve_min_rate"],
            "auto_approve_min_reviews": data["auto_approve_min_reviews"],
            "glossary": self.glossary.rows(),
            "components": self.components.rows(),
            "priority_rules": self.priority_rules.rows(),
            "team": [{"user_id": row["user"], "role": row["role"]} for row in self.team.rows()],
        }

    def add_error(self, exc: DomainError) -> None:
        """Show a `DomainError` of `bump_config` next to its field, else above the form."""
        field = error_field(exc)
        if field in self.formsets:
            self.formsets[field].non_form_errors().append(exc.message)
        elif field in self.form.fields:
            self.form.add_error(field, exc.message)
        else:
            self.form.add_error(None, exc.message)


class NewProjectForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(
        max_length=200, required=False, help_text="In the project's web address; made from the name if empty."
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def add_domain_error(self, exc: DomainError) -> None:
        field = error_field(exc)
        self.add_error(field if field in self.fields else None, exc.message)


class TaskFilterForm(forms.Form):
    """The task list's filters, read from the query string; a bad value filters nothing."""

    status = forms.ChoiceField(choices=[("", "All statuses"), *Task.Status.choices], required=False)
    # Quoted: `ModelChoiceField` is generic in its stub only.
    assignee: "forms.ModelChoiceField[User]" = forms.ModelChoiceField(
        queryset=None, required=False, empty_label="Anyone"
    )

    def __init__(self, *args: Any, team: QuerySet[User], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast("forms.ModelChoiceField[User]", self.fields["assignee"]).queryset = team

    def values(self) -> dict[str, Any]:
        self.is_valid()
        data = self.cleaned_data
        assignee = data.get("assignee")
        return {"status": data.get("status") or None, "assignee_id": assignee.pk if assignee else None}


class TaskUpdateForm(forms.Form):
    """A task's status and assignee, as its row on the task list changes them."""

    status = forms.ChoiceField(choices=Task.Status.choices)
    # Quoted: `ModelChoiceField` is generic in its stub only.
    assignee: "forms.ModelChoiceField[User]" = forms.ModelChoiceField(
        queryset=None, required=False, empty_label="Nobody"
    )

    def __init__(self, *args: Any, team: QuerySet[User], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast("forms.ModelChoiceField[User]", self.fields["assignee"]).queryset = team

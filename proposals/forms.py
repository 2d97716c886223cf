"""Forms of the review pages and the admin. They only validate input: every change goes
through the review services."""

from typing import Any, cast

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db.models import QuerySet

from projects.models import Project
from proposals.models import TaskProposal
from proposals.services import EDITABLE_FIELDS
from sources.models import Message

# The queue's status filter for proposals of every status.
ALL_STATUSES = "all"
# The queue's status filter for proposals approved by the system (proposals.services.auto).
AUTO_APPROVED = "auto_approved"


class TagsField(forms.Field):
    """Tags typed as one comma-separated line, kept as a list."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return ", ".join(str(tag) for tag in value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list | tuple):
            items = [str(tag) for tag in value]
        else:
            items = str(value or "").split(",")
        return list(dict.fromkeys(tag.strip() for tag in items if tag.strip()))


class ProposalEditForm(forms.ModelForm):
    """The fields a reviewer may change, handed to `edit_proposal` or `approve_proposal`
    as edits; the form never saves the proposal itself."""

    tags = TagsField(required=False, help_text="Separated by commas.")

    class Meta:
        model = TaskProposal
        fields = list(EDITABLE_FIELDS)
        labels = {"suggested_assignee": "Assignee"}
        widgets = {
            # The reviewer came to change it, most often its title.
            "title": forms.TextInput(attrs={"autofocus": True}),
            "description": forms.Textarea(attrs={"rows": 6}),
            "due_date": forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "suggested_assignee" in self.fields:
            assignee = cast("forms.ModelChoiceField[User]", self.fields["suggested_assignee"])
            assignee.queryset = get_user_model().objects.filter(is_active=True).order_by("username")

    def edits(self) -> dict[str, Any]:
        """What the reviewer changed, as the services take it."""
        return {name: self.cleaned_data[name] for name in self.changed_data if name in EDITABLE_FIELDS}


class RejectForm(forms.Form):
    reason = forms.CharField(
        max_length=2000,
        label="Reason",
        widget=forms.TextInput(attrs={"placeholder": "Why is this not a task?", "autocomplete": "off"}),
    )


class QueueFilterForm(forms.Form):
    """The queue's filters, read from the query string; a bad value filters nothing."""

    project = forms.ModelChoiceField(
        queryset=Project.objects.none(), required=False, empty_label="All projects"
    )
    band = forms.ChoiceField(
        choices=[("", "All confidence bands"), *TaskProposal.Band.choices], required=False, label="Confidence"
    )
    status = forms.ChoiceField(
        choices=[
            *TaskProposal.Status.choices,
            (AUTO_APPROVED, "Auto-approved"),
            (ALL_STATUSES, "Any status"),
        ],
        required=False,
    )
    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Search titles"}),
    )
    # The run page links here with its id; the queue keeps it until cleared.
    run = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1, widget=forms.HiddenInput)

    def __init__(self, *args: Any, projects: QuerySet[Project], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast("forms.ModelChoiceField[Project]", self.fields["project"]).queryset = projects

    def values(self) -> dict[str, Any]:
        """`project_id`, `band`, `run_id`, `status` (a status, `AUTO_APPROVED` or `ALL_STATUSES`) and `text`
        for the queue; a field with a bad value is left out (status: pending)."""
        self.is_valid()
        data = self.cleaned_data
        project = data.get("project")
        return {
            "project_id": project.pk if project else None,
            "band": data.get("band") or None,
            "run_id": data.get("run") or None,
            "status": data.get("status") or TaskProposal.Status.PENDING,
            "text": (data.get("q") or "").strip(),
        }


class SourceMessagesField(forms.ModelMultipleChoiceField):
    """Source messages as ticked boxes, each labelled with its author and text."""

    def label_from_instance(self, obj: Message) -> str:
        return f"{obj.author_name or 'unknown'}: {obj.text[:120]}"


class SplitPartForm(forms.Form):
    """One part of a split: a title, an optional description and some of the proposal's
    source messages (all of them unless the reviewer unticks some)."""

    title = forms.CharField(max_length=300)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    sources = SourceMessagesField(
        queryset=Message.objects.none(), widget=forms.CheckboxSelectMultiple, label="Source messages"
    )

    def __init__(self, *args: Any, messages: QuerySet[Message], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(SourceMessagesField, self.fields["sources"]).queryset = messages
        if not self.is_bound:
            self.initial.setdefault("sources", [m.pk for m in messages])

    def part(self) -> dict[str, Any]:
        """The part as `split_proposal` takes it."""
        data = self.cleaned_data
        return {
            "title": data["title"],
            "description": data["description"],
            "source_message_ids": [m.pk for m in data["sources"]],
        }


SplitFormSet = forms.formset_factory(
    SplitPartForm, extra=0, min_num=2, validate_min=True, max_num=6, validate_max=True
)


class DuplicateForm(forms.Form):
    """What a proposal duplicates: `proposal-<id>` or `task-<id>`."""

    of = forms.RegexField(regex=r"^(proposal|task)-[1-9][0-9]{0,18}$")

    def target(self) -> tuple[str, int]:
        kind, _, pk = self.cleaned_data["of"].partition("-")
        return kind, int(pk)

"""Forms of the review pages and the admin. They only validate input: every change goes
through the review services."""

from typing import Any

from django import forms
from django.contrib.auth import get_user_model

from projects.models import Project
from proposals.models import TaskProposal
from proposals.services import EDITABLE_FIELDS


class TagsField(forms.CharField):
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
            "description": forms.Textarea(attrs={"rows": 6}),
            "due_date": forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "suggested_assignee" in self.fields:
            self.fields["suggested_assignee"].queryset = (
                get_user_model().objects.filter(is_active=True).order_by("username")
            )

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
    # The run page links here with its id; the queue keeps it until cleared.
    run = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1, widget=forms.HiddenInput)

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects

    def values(self) -> dict[str, Any]:
        """`project_id`, `band` and `run_id` for `review_queue`; a field with a bad value is
        left out."""
        self.is_valid()
        data = self.cleaned_data
        project = data.get("project")
        return {
            "project_id": project.pk if project else None,
            "band": data.get("band") or None,
            "run_id": data.get("run") or None,
        }

from datetime import timedelta
from typing import Any, cast

from django import forms
from django.db.models import QuerySet
from django.utils import timezone

from agents.models import AgentTaskAssignment
from analysis.selectors import startable_projects
from projects.models import Project
from tasktracker.types import AnyUser


def _active_assignments() -> QuerySet[AgentTaskAssignment]:
    return AgentTaskAssignment.objects.filter(is_active=True, agent__is_active=True).select_related(
        "agent", "task_config"
    )


class NewRunForm(forms.Form):
    projects = forms.ModelMultipleChoiceField(
        queryset=Project.objects.filter(is_active=True), widget=forms.CheckboxSelectMultiple
    )
    assignment = forms.ModelChoiceField(queryset=_active_assignments(), label="Agent and task")
    window_start = forms.DateTimeField(widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    window_end = forms.DateTimeField(widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))

    def __init__(self, *args: Any, user: AnyUser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only the projects this user may start runs of can be chosen (staff: all). The
        # defaults make a run a newcomer can start at once: every such project, the first
        # agent and task, the last seven days.
        projects = startable_projects(user)
        cast("forms.ModelMultipleChoiceField[Project]", self.fields["projects"]).queryset = projects
        self.fields["projects"].initial = list(projects.values_list("pk", flat=True))
        self.fields["assignment"].initial = _active_assignments().values_list("pk", flat=True).first()
        now = timezone.localtime().replace(second=0, microsecond=0)
        self.fields["window_end"].initial = now.strftime("%Y-%m-%dT%H:%M")
        self.fields["window_start"].initial = (now - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M")

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        start, end = cleaned.get("window_start"), cleaned.get("window_end")
        if start and end and end <= start:
            self.add_error("window_end", "The window must end after it starts.")
        return cleaned

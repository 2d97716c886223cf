"""Template tags of `analysis` for other apps' pages: the project page shows its recent runs
without `projects` importing `analysis` (dependencies point down: analysis → projects)."""

from django import template

from analysis.models import AnalysisRun
from analysis.selectors import recent_runs_of_project
from projects.models import Project

register = template.Library()


@register.inclusion_tag("analysis/_recent_runs.html")
def recent_runs(project: Project, limit: int = 10) -> dict[str, list[AnalysisRun]]:
    """A table of the project's latest runs, each with the version of the project it used."""
    return {"runs": recent_runs_of_project(project, limit=limit)}

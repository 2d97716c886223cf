"""A reviewer of every project, for the tests of reviewing itself.

Before per-project roles, a member of the global Reviewers group reviewed every project's
proposals; its migration gave each of them the reviewer role on every project. These
tests are about what a review does, not about who may: their reviewer reviews every
project of the test, those made after it too (`tests/proposals/conftest.py` watches for
new projects during each test).
"""

from typing import Any

from projects.models import Project, ProjectMembership

_reviewer_ids: list[int] = []


def _add_reviews(project_ids: list[int], user_ids: list[int]) -> None:
    for project_id in project_ids:
        for user_id in user_ids:
            ProjectMembership.objects.get_or_create(
                project_id=project_id, user_id=user_id, defaults={"role": ProjectMembership.Role.REVIEWER}
            )


def review_new_project(sender: type[Project], instance: Project, created: bool, **kwargs: Any) -> None:
    if created:
        _add_reviews([instance.pk], _reviewer_ids)


def forget_reviewers() -> None:
    _reviewer_ids.clear()


def review_every_project(user: Any) -> Any:
    """Make `user` a reviewer of every project of the test (a project they are on already
    keeps their role there)."""
    _reviewer_ids.append(user.pk)
    _add_reviews(list(Project.objects.values_list("pk", flat=True)), [user.pk])
    return user

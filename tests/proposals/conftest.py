from collections.abc import Iterator

import pytest
from django.db.models.signals import post_save

from projects.models import Project
from tests.proposals.helpers import forget_reviewers, review_new_project


@pytest.fixture(autouse=True)
def reviewers_of_every_project() -> Iterator[None]:
    """`review_every_project` holds for the projects a test makes after calling it."""
    post_save.connect(review_new_project, sender=Project, dispatch_uid="tests-review-every-project")
    yield
    post_save.disconnect(sender=Project, dispatch_uid="tests-review-every-project")
    forget_reviewers()

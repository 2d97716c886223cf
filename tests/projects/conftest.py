"""A project made the way team leads make them: through `create_project`."""

from typing import Any

import pytest

from projects.models import Project
from projects.services import create_project
from tests.factories import ChatFactory, UserFactory


@pytest.fixture
def lead() -> Any:
    return UserFactory(username="alice", first_name="Alice", last_name="Kim")


@pytest.fixture
def member() -> Any:
    return UserFactory(username="bob", first_name="Bob", last_name="Martin")


@pytest.fixture
def chat() -> Any:
    return ChatFactory(title="Acme Mobile Team")


@pytest.fixture
def project(lead: Any, member: Any, chat: Any) -> Project:
    """Acme Mobile v1.0.0: alice leads, bob is a member and the default assignee."""
    return create_project(
        name="Acme Mobile",
        slug="acme-mobile",
        user=lead,
        changes={
            "description": "The mobile apps.",
            "keywords": ["android", "ios"],
            "exclude_keywords": ["lunch"],
            "glossary": [{"term": "RC", "meaning": "Release candidate"}],
            "components": [{"name": "Android app", "keywords": ["android"]}],
            "priority_rules": [{"when": "crash on login", "priority": "critical"}],
            "chats": [chat.pk],
            "team": [{"user_id": member.pk, "role": "member"}],
            "default_assignee": member.pk,
        },
    )

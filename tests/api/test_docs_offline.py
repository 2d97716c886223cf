"""/api/docs/ works without internet: Swagger UI's files come from this server."""

import re

import pytest
from django.test import Client

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_swagger_ui_loads_its_files_from_this_server_only() -> None:
    client = Client()
    client.force_login(UserFactory())

    page = client.get("/api/docs/")

    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    scripts = [asset for asset in assets if asset.endswith(".js")]
    assert scripts, html
    assert not [asset for asset in assets if asset.startswith(("http://", "https://", "//"))]
    for asset in scripts:
        assert client.get(asset).status_code == 200, asset

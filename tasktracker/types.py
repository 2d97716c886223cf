"""Type aliases for the project's users and requests (annotations only).

There is no custom user model, so a signed-in user is `django.contrib.auth.models.User`;
`request.user` may also be the `AnonymousUser` until a view or a permission has refused
anonymous requests.
"""

from typing import TYPE_CHECKING

from django.contrib.auth.models import AnonymousUser, User
from django.http import HttpRequest
from rest_framework.request import Request

__all__ = ["AnyUser", "AuthedAPIRequest", "AuthedRequest", "User"]

# What `request.user` may be before anyone checked it.
AnyUser = User | AnonymousUser


class AuthedRequest(HttpRequest):
    """A page request behind `login_required`: its user is signed in."""

    user: User


if TYPE_CHECKING:

    class AuthedAPIRequest(Request):
        """A DRF request behind `IsAuthenticated` (the default permission): its user is
        signed in."""

        @property
        def user(self) -> User: ...
        @user.setter
        def user(self, value: User) -> None: ...

else:
    AuthedAPIRequest = Request

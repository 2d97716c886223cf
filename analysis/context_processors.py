from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from analysis.selectors import finished_run_notices


def run_notices(request: HttpRequest) -> dict[str, SimpleLazyObject]:
    """`run_notices`, the finished runs base.html's top bar tells the user about.

    Lazy: it runs with every template rendered with a request, so the query waits until a
    page shows the notices; the admin's pages, for one, never do and cost nothing.
    """
    if not hasattr(request, "user"):  # a request the authentication middleware did not see
        return {}
    return {"run_notices": SimpleLazyObject(lambda: finished_run_notices(request.user))}

"""Rate limits (DRF throttles), rates in ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``.

A view limits an action by naming it: ``throttle_actions = {"create": "submissions"}``. Counts
are per user, or per client address for anonymous requests (``NUM_PROXIES`` says which
``X-Forwarded-For`` entry is the client), kept in the default cache."""

from functools import wraps

from django.http import HttpResponse
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


class ActionRateThrottle(SimpleRateThrottle):
    """Limits the actions a view names in ``throttle_actions``; any other request passes."""

    def __init__(self, scope: str | None = None, *, per_address: bool = False):
        self.scope = scope  # the rate is looked up per request: views name the scope
        self.per_address = per_address

    def allow_request(self, request, view) -> bool:
        self.scope = self.scope or getattr(view, "throttle_actions", {}).get(getattr(view, "action", None))
        if self.scope is None:
            return True
        # Read now, not at import as DRF's own throttles do, so a changed setting counts at once.
        self.rate = api_settings.DEFAULT_THROTTLE_RATES[self.scope]
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view) -> str:
        user = getattr(request, "user", None)
        by_user = not self.per_address and user is not None and user.is_authenticated
        ident = user.pk if by_user else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


def rate_limited(view, *, scope: str):
    """A plain Django view (the login forms) whose POSTs count against ``scope``, per client
    address; past the rate it answers 429 saying when to try again, and the view never runs."""

    @wraps(view)
    def limited(request, *args, **kwargs):
        if request.method == "POST":
            # By address whoever is logged in: the form is how someone logs in.
            throttle = ActionRateThrottle(scope, per_address=True)
            if not throttle.allow_request(request, None):
                wait = round(throttle.wait() or 1)
                response = HttpResponse(f"Too many attempts from your address; try again in {wait} s.\n",
                                        status=429, content_type="text/plain")
                response["Retry-After"] = str(wait)
                return response
        return view(request, *args, **kwargs)

    return limited


import time

from core.instruments import REQUEST_SECONDS

# Anything else is folded into "other", so a client cannot invent label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestLatencyMiddleware:
    """Observes each request's latency, labelled by the URL *pattern* (bounded), not the path."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = (match.route or match.view_name) if match is not None else "<unmatched>"
        method = request.method if request.method in METHODS else "other"
        REQUEST_SECONDS.labels(method=method, route=route, status=str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

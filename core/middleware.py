import re

from django.conf import settings
from django.http import JsonResponse


class BodySizeLimitMiddleware:
    """Refuse bodies over the limit with 413 before anything reads them, on every path (the API,
    the node API, the console and its login form alike).

    Bodies get ``CNET_MAX_BODY_BYTES`` (1 MiB); multipart uploads to the paths that take files
    (``CNET_UPLOAD_PATHS``: model artifacts, which Django streams to disk) get
    ``CNET_MAX_UPLOAD_BYTES``. A body without a length (chunked) is read by Django as empty, so
    it cannot slip past.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.upload_paths = [re.compile(pattern) for pattern in settings.CNET_UPLOAD_PATHS]

    def __call__(self, request):
        upload = request.META.get("CONTENT_TYPE", "").startswith("multipart/form-data") and any(
            pattern.match(request.path) for pattern in self.upload_paths)
        limit = settings.CNET_MAX_UPLOAD_BYTES if upload else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if limit is not None and length > limit:
            return JsonResponse(
                {"detail": f"body: {length} bytes is over the limit of {limit} bytes"},
                status=413,
            )
        return self.get_response(request)

from django.conf import settings
from django.http import JsonResponse


class BodySizeLimitMiddleware:
    """Refuse API bodies over the limit with 413 before anything reads them.

    JSON bodies get ``CNET_MAX_BODY_BYTES`` (1 MiB); multipart uploads (model artifacts),
    which Django streams to disk, get ``CNET_MAX_UPLOAD_BYTES``.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        multipart = request.META.get("CONTENT_TYPE", "").startswith("multipart/form-data")
        limit = settings.CNET_MAX_UPLOAD_BYTES if multipart else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if request.path.startswith("/api/") and limit is not None and length > limit:
            return JsonResponse(
                {"detail": f"body: {length} bytes is over the limit of {limit} bytes"},
                status=413,
            )
        return self.get_response(request)

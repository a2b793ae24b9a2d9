"""Errors of predict that the shared ones do not cover; mapped by ``core.api.api_exception_handler``."""

from core.errors import DomainError


class PayloadTooLarge(DomainError):
    """A batch over the per-request limit."""

    status = 413


class PredictionFailed(DomainError):
    """The model raised; the message is the model's."""

    status = 422

"""Errors of predict that the shared ones do not cover; mapped by ``cnetsite.api.api_exception_handler``."""

from cnetsite.errors import DomainError


class PayloadTooLarge(DomainError):
    """A batch over the per-request limit."""

    status = 413


class PredictionFailed(DomainError):
    """The model raised; the message is the model's."""

    status = 422

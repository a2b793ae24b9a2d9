"""Domain errors raised by services; ``core.api.api_exception_handler`` maps them to HTTP."""


class DomainError(Exception):
    status = 400

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field

    def as_dict(self) -> dict:
        if self.field:
            return {self.field: [str(self)], "detail": f"{self.field}: {self}"}
        return {"detail": str(self)}


class InvalidRequest(DomainError):
    """Bad input; names the field at fault."""

    status = 400


class Unauthorized(DomainError):
    """No credential, or one that is not (or no longer) valid."""

    status = 401


class Forbidden(DomainError):
    """A valid caller asking for what it may not do (e.g. a node acting for another node)."""

    status = 403


class NotFound(DomainError):
    status = 404


class StateConflict(DomainError):
    """The request is valid but the object's state forbids it (e.g. stop a finished workload)."""

    status = 409


class Unprocessable(DomainError):
    status = 422

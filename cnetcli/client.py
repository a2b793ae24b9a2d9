"""The one conversation with the REST API: base URL, token, one keep-alive connection, and the
API's own message on every refusal."""

import json

import httpx

from . import __name__ as _package
from .config import Settings

LOGIN_HINT = "log in with `cnet login --server URL --token TOKEN` (make run prints the token) or set CNET_TOKEN"


class CliError(Exception):
    """A failure to tell the user in one line, and the exit code to leave with."""

    def __init__(self, message: str, *, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ApiError(CliError):
    def __init__(self, message: str, *, status: int):
        super().__init__(message)
        self.status = status


class Api:
    def __init__(self, settings: Settings, *, timeout: float = 30.0):
        self.settings = settings
        headers = {"User-Agent": _package}
        if settings.token:
            headers["Authorization"] = f"Token {settings.token}"
        self._http = httpx.Client(base_url=f"{settings.server}/api", headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        if not self.settings.token:
            raise CliError(f"not logged in to {self.settings.server}: {LOGIN_HINT}")
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise CliError(f"cannot reach {self.settings.server}: {error or type(error).__name__}") from None
        if response.status_code >= 400:
            raise _refusal(response, self.settings.server)
        return response

    def get(self, path: str, **params):
        return self.request("GET", path, params={k: v for k, v in params.items() if v not in (None, "", ())}).json()

    def post(self, path: str, body=None, **kwargs):
        response = self.request("POST", path, json=body, **kwargs)
        return response.json() if response.content else None

    def delete(self, path: str) -> None:
        self.request("DELETE", path)


def _refusal(response: httpx.Response, server: str) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if detail:
        message = str(detail)
    elif body is not None:
        message = json.dumps(body)[:500]
    else:  # a page, not an answer of the API's (an unknown path): its status says enough
        message = f"{response.reason_phrase}: {response.request.method} {response.request.url.path}"
    if response.status_code == 401 or (response.status_code == 403 and "credentials" in message.lower()):
        return ApiError(f"{server} refused the token ({message}): {LOGIN_HINT}", status=response.status_code)
    return ApiError(f"{message} (HTTP {response.status_code})", status=response.status_code)

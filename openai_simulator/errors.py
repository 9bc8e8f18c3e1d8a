"""OpenAI-shaped errors: every refusal the simulator gives, sync or inside a batch, is one of these.

Raised by rules and handlers; `app.py` turns one into a response, `batches.py` into an error-file line.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A refusal with the real API's body `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid_value(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def missing_parameter(param: str) -> APIError:
    return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def not_found(kind: str, object_id: str, param: str = "id") -> APIError:
    # The real API words it "No such File object: file-..." and sends no code.
    return APIError(404, f"No such {kind} object: {object_id}", param=param)


SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"


def server_error(message: str = SERVER_ERROR_MESSAGE, headers: dict[str, str] | None = None) -> APIError:
    return APIError(500, message, type="server_error", code="server_error", headers=headers)

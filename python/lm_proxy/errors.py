"""Exceptions of lm-proxy that user code raises or catches."""

from __future__ import annotations

__all__ = ["ConfigError", "OpenAIHTTPException"]


class OpenAIHTTPException(Exception):
    """An error answer in the OpenAI format, raised by user code.

    Raised by a key check, a ``before`` handler or a connection, it ends the request
    with ``status_code`` and the body
    ``{"error": {"message", "type": error_type, "param", "code"}}``, plus ``headers``
    (for example ``Retry-After``). Awaiting a Rust connection from
    ``lm_proxy.bootstrap.env.connections`` raises it for upstream failures too.
    """

    def __init__(
        self,
        message: str,
        status_code: int = 400,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.code = code
        self.headers = dict(headers or {})
        self.param = param

    def __repr__(self) -> str:
        return (
            f"OpenAIHTTPException({self.message!r}, status_code={self.status_code}, "
            f"error_type={self.error_type!r}, code={self.code!r})"
        )

    def to_dict(self) -> dict[str, object]:
        """The OpenAI ``error`` object, with the HTTP ``status``."""
        return {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
            "status": self.status_code,
        }


class ConfigError(ValueError):
    """A config that cannot be served: one line naming the file, the key and the problem."""

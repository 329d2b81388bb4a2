"""ApiError and the two error shapes: OpenAI's {"error": {message, type, param, code}} and Ollama's
{"error": message}. Kernel errors (OSError with an errno) map to HTTP statuses in one table."""

from __future__ import annotations

import errno as E

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 501: "not_implemented_error",
         503: "service_unavailable_error", 504: "timeout_error"}

ERRNO_STATUS = {E.EINVAL: 400, E.E2BIG: 400, E.EPERM: 403, E.EACCES: 403, E.ESRCH: 404,
                E.EPIPE: 409, E.EAGAIN: 429, E.ETIMEDOUT: 504, E.ENOSYS: 501, E.ESHUTDOWN: 503,
                E.ECONNREFUSED: 503, E.ECONNRESET: 503, E.ENOENT: 503}
KERNEL_GONE = (E.ECONNREFUSED, E.ECONNRESET, E.ESHUTDOWN)


class ApiError(Exception):
    """An HTTP error answer: status, message, and OpenAI's param/code where they help."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @classmethod
    def from_os(cls, e: OSError, param: str | None = None) -> "ApiError":
        """A kernel error: its errno picks the status; a kernel that does not answer is 503."""
        status = ERRNO_STATUS.get(e.errno, 500)
        if isinstance(e, TimeoutError) and type(e).__name__ == "KernelNotAnswering":
            status = 503
        code = E.errorcode.get(e.errno) if e.errno else None
        return cls(status, e.strerror or str(e), param=param, code=code)

    def openai(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def ollama(self) -> dict:
        return {"error": self.message}

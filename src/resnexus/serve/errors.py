"""Every refusal and failure answered as JSON ``{"error": "..."}`` with its status, and every request
counted and timed for ``/metrics``.

An unexpected exception is answered by the middleware itself: past it Starlette re-raises, and
uvicorn would drop the client's keep-alive connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import Unavailable
from .routes import error
from .state import server_state
from .uploads import UploadError

logger = logging.getLogger(__name__)


async def refused(request: Request, exc: UploadError) -> JSONResponse:
    server_state(request).metrics.errors.labels(exc.reason).inc()
    return error(exc.status, exc.message)


async def unavailable(request: Request, exc: Unavailable) -> JSONResponse:
    server_state(request).metrics.errors.labels("unavailable").inc()
    return error(503, f"service unavailable: {exc}")


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    server_state(request).metrics.errors.labels(f"http-{exc.status_code}").inc()
    return error(exc.status_code, str(exc.detail))


async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    server_state(request).metrics.errors.labels("invalid-request").inc()
    return error(400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


async def failed(request: Request, exc: Exception) -> JSONResponse:
    logger.exception(f"{request.url.path}: internal error")
    server_state(request).metrics.errors.labels("internal").inc()
    # the type only: an exception's text may name server paths or data, which a client must not see
    return error(500, f"internal error ({type(exc).__name__}): the server's log has the details")


def install(app: FastAPI, endpoints: Collection[str]) -> None:
    """Answer errors as JSON and count requests by endpoint (a path not in ``endpoints`` is "other")."""

    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started, status = time.perf_counter(), 500  # 500 unless a response comes back
        try:
            try:
                response = await call_next(request)
            except Exception as exc:  # answered here: past this point Starlette re-raises, and
                response = await failed(request, exc)  # uvicorn drops the client's keep-alive connection
            status = response.status_code
            return response
        finally:
            metrics = server_state(request).metrics
            endpoint = request.url.path if request.url.path in endpoints else "other"
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    app.middleware("http")(count)
    app.add_exception_handler(UploadError, refused)
    app.add_exception_handler(Unavailable, unavailable)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, failed)

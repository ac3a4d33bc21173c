"""HTTP errors: a page with a way back for browsers, FastAPI's JSON for API clients.

A request gets the page when the route it matched is one of the pages, or, when no route
matched (an unknown address), when its Accept header asks for HTML, as a browser's navigation
does. Any other route is API: its errors stay JSON whatever the Accept header says.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from app.api.routes import pages

MESSAGES = {
    status.HTTP_400_BAD_REQUEST: "This request could not be read.",
    # Pages raise 403 for one reason only (pages.same_site_forms).
    status.HTTP_403_FORBIDDEN: "A page of another site sent this form, so nothing was done.",
    status.HTTP_404_NOT_FOUND: "There is no page at this address.",
    status.HTTP_405_METHOD_NOT_ALLOWED: "This address cannot be used that way.",
}


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]


def _wants_page(request: Request) -> bool:
    route = request.scope.get("route")
    if route is not None:
        return pages.serves(route)
    return "text/html" in request.headers.get("accept", "")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if not _wants_page(request):
        return await http_exception_handler(request, exc)
    return _error_page(request, exc.status_code, exc.headers)


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    if not _wants_page(request):
        # FastAPI's 422 less each error's `input`, which would echo a password back.
        errors = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
        return await request_validation_exception_handler(request, RequestValidationError(errors))
    # A path that names nothing (`/chat/my room`) is a page that does not exist.
    in_path = any(error["loc"][0] == "path" for error in exc.errors())
    return _error_page(
        request, status.HTTP_404_NOT_FOUND if in_path else status.HTTP_400_BAD_REQUEST
    )


def _error_page(request: Request, code: int, headers: Mapping[str, str] | None = None) -> Response:
    room_address = request.url.path.startswith("/chat/")
    response = pages.templates.TemplateResponse(
        request,
        "error.html",
        {
            "title": HTTPStatus(code).phrase,
            "message": MESSAGES.get(code, "Something went wrong with this request."),
            "hint": pages.ROOM_RULE if code == status.HTTP_404_NOT_FOUND and room_address else None,
        },
        status_code=code,
    )
    response.headers.update(headers or {})
    return response

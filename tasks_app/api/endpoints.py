"""The JSON API (``/api/v1/``) used by the Python client and the CLI.

Endpoints are thin: they find the object through :mod:`tasks_app.access`
(404 for anything the caller may not see), call :mod:`tasks_app.services`,
and shape the answer with :mod:`tasks_app.api.schemas`. Every error body is
``{"error": code, "message": text, "field": name-or-null}``, whatever went
wrong: a refused request, bad input, a missing key, an unknown URL.

The operations live by subject in ``tasks.py``, ``files.py``, ``groups.py``
and ``projects.py``; this module assembles them, answers the reference
questions (statuses, machine types, simulators) and serves the docs page.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ninja
from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import DataError, InterfaceError, OperationalError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.utils.html import escape
from ninja import NinjaAPI, Router
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.openapi.docs import DocsBase
from ninja.security import HttpBearer
from psycopg_pool import PoolTimeout

from tasks_app import access, inputs, lifecycle, services, storage
from tasks_app import simulators as sims
from tasks_app.api import files, groups, notifications, projects, review, tasks
from tasks_app.api import schemas as s
from tasks_app.api import storage as storage_api
from tasks_app.api.common import ERRORS
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey


class KeyAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        user = APIKey.authenticate(token)
        if user is not None:
            request.user = user
        return user


# Swagger UI from the copy inside django-ninja, served by the API itself:
# machines may be offline, so no CDN, and ninja need not be an installed app.
DOCS_ASSETS = Path(ninja.__file__).parent / "static" / "ninja"
DOCS_FILES = {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-init.js", "favicon.png"}


class OfflineSwagger(DocsBase):
    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs) -> HttpResponse:
        assets = request.path.rstrip("/") + "/assets"
        config = {"url": self.get_openapi_url(api, kwargs), "layout": "BaseLayout", "deepLinking": True}
        html = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{escape(api.title)}</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <link rel="icon" href="{assets}/favicon.png">
</head>
<body>
  <script type="application/json" id="swagger-settings">{escape(json.dumps(config))}</script>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script src="{assets}/swagger-ui-init.js"></script>
</body>
</html>
"""
        return HttpResponse(html)


log = logging.getLogger(__name__)

api = NinjaAPI(
    title="Simdeck API",
    version="1",
    description=(
        "Submit simulation tasks, follow them and collect their outputs.\n\n"
        "Authenticate with `Authorization: Bearer <API key>`. Lists are paged with a cursor: "
        "pass a page's `next_cursor` as `cursor` to get the next one. Every error answers "
        '`{"error": code, "message": text, "field": name or null}`.'
    ),
    auth=KeyAuth(),
    urls_namespace="api",
    docs=OfflineSwagger(),
)


# -- errors ----------------------------------------------------------------------


# Names the operations give their schema arguments (payload: s.TaskIn, filters: Query[...]).
SCHEMA_ARGUMENTS = ("payload", "filters")


def _error(request, status: int, code: str, message: str, field: str | None = None):
    return api.create_response(request, {"error": code, "message": message, "field": field}, status=status)


def not_found(request, exception=None):
    """The site's 404: JSON in the API's error shape under ``/api/``, the console's page elsewhere.

    A path no route matches (a file name with a line break in it, say)
    never reaches the API's own handlers, yet an API client must still get
    an answer it can read.
    """
    if request.path.startswith("/api/"):
        return _error(
            request,
            404,
            "not_found",
            "No API endpoint matches this path. Check it against /api/v1/openapi.json "
            "and percent-encode the names in it.",
        )
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def bad_request(request, exception=None):
    """The site's 400 (a request Django refuses before any view, e.g. a Host it does not serve).

    JSON in the API's error shape under ``/api/``, Django's page elsewhere.
    """
    if request.path.startswith("/api/"):
        return _error(
            request,
            400,
            "bad_request",
            "This request cannot be served as sent (a Host header this server does not answer to, "
            "or a malformed request). Send it to the server's own address.",
        )
    from django.views.defaults import bad_request as page

    return page(request, exception)


@api.exception_handler(services.Refused)
def _refused(request, exc: services.Refused):
    return _error(request, exc.status, exc.code, str(exc), exc.field)


@api.exception_handler(Http404)
def _not_found(request, exc):
    if isinstance(exc, access.NotVisible) and exc.kind:
        return _error(request, 404, "not_found", exc.message)
    return _error(request, 404, "not_found", "No such object, or it is not yours to see. Check the id.")


@api.exception_handler(PermissionDenied)
def _forbidden(request, exc: PermissionDenied):
    # The object is visible, so saying why it is refused leaks nothing new.
    return _error(request, 403, "forbidden", str(exc) or "Your role does not allow this.")


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc):
    return _error(
        request,
        401,
        "unauthenticated",
        "Missing or invalid API key. Send 'Authorization: Bearer <key>'; "
        "create a key with 'manage.py createapikey USERNAME' or in the console.",
    )


@api.exception_handler(ValidationError)
def _invalid(request, exc: ValidationError):
    first = exc.errors[0] if exc.errors else {}
    loc = [str(p) for p in first.get("loc", [])]
    # ninja puts where the value came from first, then the name of the schema
    # argument holding it; the user knows neither, only the field.
    if loc and loc[0] in ("body", "query", "path", "header", "cookie", "form", "file"):
        loc = loc[1:]
    if loc and loc[0] in SCHEMA_ARGUMENTS:
        loc = loc[1:]
    field = ".".join(loc) or None
    return _error(
        request, 400, "invalid", f"{field or 'request'}: {first.get('msg', 'invalid value')}.", field
    )


@api.exception_handler(RequestDataTooBig)
def _too_big(request, exc):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return _error(
        request, 413, "too_large", f"The request body is larger than this server accepts ({limit} bytes)."
    )


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unreachable(request, exc):
    # Both pass, so the client is told to ask again shortly: a burst of
    # requests waited too long for a database connection, or the database restarts.
    if isinstance(exc.__cause__, PoolTimeout):
        log.warning("Request to %s refused: no database connection came free in time", request.path)
        message = (
            "The server is too busy to take this request now; nothing was done. Try again in a few seconds."
        )
    else:
        log.warning("Request to %s failed: the database is unreachable (%s)", request.path, exc)
        message = (
            "The server cannot reach its database at the moment (it may be restarting). "
            "Try again in a few seconds."
        )
    response = _error(request, 503, "unavailable", message)
    response["Retry-After"] = "5"
    return response


@api.exception_handler(storage.StorageUnavailable)
def _storage_unavailable(request, exc: storage.StorageUnavailable):
    log.error("Request to %s failed: %s", request.path, exc)
    return _error(request, 503, "storage_unavailable", f"The server's file storage failed: {exc}")


@api.exception_handler(DataError)
def _unstorable(request, exc):
    # The database refused a value no check foresaw; the checks in
    # tasks_app.inputs name the field for every value they know of.
    log.warning("Request to %s refused by the database: %s", request.path, exc)
    return _error(
        request,
        400,
        "invalid",
        "A value in the request cannot be stored (a character or a number the database refuses). "
        "Check the values against /api/v1/openapi.json.",
    )


@api.exception_handler(UnicodeEncodeError)
def _not_unicode(request, exc):
    # A lone surrogate that reached the database; the checks in tasks_app.inputs
    # refuse those with the field's name wherever they know the field.
    return _error(
        request,
        400,
        "invalid",
        "A text in the request holds a lone surrogate (such as \\ud800), which is not a character. "
        "Send valid Unicode.",
    )


HTTP_CODES = {400: "invalid", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 413: "too_large"}


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    # ninja's own refusals, e.g. a body that is not JSON ("Cannot parse request body").
    message = str(exc).rstrip(".") + "."
    return _error(request, exc.status_code, HTTP_CODES.get(exc.status_code, "error"), message)


# -- who am I, what is there -------------------------------------------------------


@api.get("/whoami", response={200: s.WhoAmIOut, **ERRORS}, tags=["account"])
def whoami(request: HttpRequest):
    """The user the API key belongs to."""
    user = request.user
    return {
        "username": user.username,
        "is_staff": user.is_staff,
        "email": user.email,
        "name": user.get_full_name(),
    }


@api.get("/quotas", response={200: s.QuotasOut, **ERRORS}, tags=["account"])
def quotas(request: HttpRequest):
    """Your quotas and those of your projects, each with what is in use now.

    A machine group needs room under both its owner's and its project's limits.
    """
    return services.quota_overview(request.user)


@api.get("/statuses", response=list[s.StatusOut], tags=["reference"], auth=None)
def statuses(request: HttpRequest):
    """Every status of the task lifecycle, with its guidance and the statuses that may follow."""
    return [
        {
            "value": st.value,
            "label": st.label,
            "terminal": st in lifecycle.TERMINAL,
            "failure": st in lifecycle.FAILURES,
            "next": [n.value for n in sorted(lifecycle.TRANSITIONS[st])],
            "aliases": sorted(a for a, target in lifecycle.ALIASES.items() if target == st),
            **vars(lifecycle.GUIDANCE[st]),
        }
        for st in Status
    ]


@api.get("/machine-types", response={200: list[s.MachineTypeOut], **ERRORS}, tags=["machine groups"])
def machine_types(request: HttpRequest):
    """The machine types groups can be made of, with their price per hour."""
    currency = settings.SIMDECK_CURRENCY
    return [
        {
            "name": k.name,
            "vcpus": k.vcpus,
            "memory_gb": k.memory_gb,
            "price_per_hour": k.price_per_hour,
            "currency": currency,
        }
        for k in sorted(services.catalog().values(), key=lambda k: k.name)
    ]


@api.get("/usage", response={200: s.UsageOut, **ERRORS}, tags=["projects"])
def usage(request: HttpRequest, month: str = "", project: str = ""):
    """What your projects' tasks and machines used in a month (UTC; this one by default), and its cost.

    Tasks count in the day they ended (those computing now, today); machines
    every hour they were up, idle included. ``project`` keeps one project.
    """
    start, end = services.month_bounds(month)
    if project:
        chosen = access.project_for(request.user, inputs.text("project", project))
        names = {chosen.pk: chosen.name}
    else:
        names = dict(access.visible_projects(request.user).values_list("pk", "name"))
    return services.report(list(names), start, end).as_dict(names)


@api.get("/simulators", response={200: list[s.SimulatorOut], **ERRORS}, tags=["simulators"])
def simulators(request: HttpRequest):
    """The simulators this server knows, and whether its own host has them."""
    out = []
    for sim in sims.REGISTRY.values():
        try:
            out.append({"name": sim.name, "label": sim.label, "version": sim.version(), "available": True})
        except sims.SimulatorMissing as exc:
            out.append(
                {
                    "name": sim.name,
                    "label": sim.label,
                    "version": None,
                    "available": False,
                    "problem": str(exc),
                }
            )
    return out


@api.get("/docs/assets/{name}", auth=None, include_in_schema=False)
def docs_asset(request: HttpRequest, name: str):
    if name not in DOCS_FILES:
        raise Http404
    return FileResponse(open(DOCS_ASSETS / name, "rb"))


api.add_router("/tasks", tasks.router)
api.add_router("/tasks", files.router)
api.add_router("/tasks", review.router)
api.add_router("/machine-groups", groups.router)
api.add_router("/projects", projects.router)
api.add_router("/storage", storage_api.router)
api.add_router("/notifications", notifications.router)

# Last, so it only sees what nothing else claimed: unknown URLs under the API
# answer with an error body like every other error, not an HTML page.
fallback = Router()


@fallback.api_operation(
    ["GET", "POST", "PUT", "PATCH", "DELETE"], "/{path:path}", auth=None, include_in_schema=False
)
def unknown(request: HttpRequest, path: str):
    return _error(
        request,
        404,
        "not_found",
        f"There is no API operation at /api/v1/{path}. The list is at /api/v1/docs.",
    )


api.add_router("", fallback)

"""Response headers Django's SecurityMiddleware does not set, and the API's answer to a wrong method."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


class ContentSecurityPolicyMiddleware:
    """Send ``settings.CONTENT_SECURITY_POLICY`` with every answer.

    A view that needs another policy sets the header itself; it is left alone.
    Even if some text slipped through escaping, the browser would run no
    script and load nothing that does not come from this server.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self.policy = settings.CONTENT_SECURITY_POLICY

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if self.policy:
            response.headers.setdefault("Content-Security-Policy", self.policy)
        response.headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        return response


class APIMethodNotAllowedMiddleware:
    """Answer a method an API path does not take in the API's error shape.

    django-ninja answers it itself, in plain text, before any of the API's
    error handlers runs; every other error of the API is
    ``{"error", "message", "field"}``, and a client must be able to read this
    one the same way. The ``Allow`` header stays.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code != 405 or not request.path.startswith("/api/"):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        allowed = response.get("Allow", "")
        message = f"{request.method} is not an operation of {request.path}."
        if allowed:
            message += f" It takes {allowed}; see /api/v1/openapi.json."
        shaped = JsonResponse({"error": "method_not_allowed", "message": message, "field": None}, status=405)
        if allowed:
            shaped["Allow"] = allowed
        return shaped

"""Which WebSockets may open: only from a page of this site, by the rule Django's CSRF check uses.

A browser sends the page's origin with every WebSocket it opens, and sends
the session cookie whatever that page is; so a socket from another origin
(another port of the same host counts as another origin) must be refused
before it opens. The origin must be this request's own scheme, host and
port, the host one of ``ALLOWED_HOSTS``, or be listed in
``CSRF_TRUSTED_ORIGINS`` (``https://*.example.org`` for subdomains), as for
a form. A socket with no origin is refused too: every browser sends one,
and the Python client sends its server's.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host


def _allowed_hosts() -> list[str]:
    hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not hosts:  # as HttpRequest.get_host() allows
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def _secure(scope: dict, headers: dict[bytes, bytes]) -> bool:
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name, value = proxy
        header = name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
        if header in headers:
            return headers[header].decode("latin1").split(",")[0].strip() == value
    return scope.get("scheme") in ("wss", "https")


def origin_allowed(scope: dict) -> bool:
    """Whether the socket's ``Origin`` is this site, as a form's would have to be."""
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin", b"").decode("latin1")
    host = headers.get(b"host", b"").decode("latin1")
    if not origin or not host:
        return False
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return False
    scheme = "https" if _secure(scope, headers) else "http"
    if origin == f"{scheme}://{host}" or origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        allowed = urlsplit(trusted)
        if "*" in allowed.netloc and allowed.scheme == parsed.scheme:
            if is_same_domain(parsed.netloc, allowed.netloc.replace("*", "", 1)):
                return True
    return False


class SameOriginValidator:
    """Refuse, before it opens, a WebSocket whose origin is not this site (see the module)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)

"""The ASGI application: HTTP through Django, WebSockets through Channels."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

from django.core.asgi import get_asgi_application

# The web server takes its database connections from a pool: the settings
# read SIMDECK_DB_POOL while Django sets up (see console/settings.py). It is
# put back afterwards, so that no process started later from this one (a
# test's, say) inherits a pool meant for the web server.
_pool_setting = os.environ.get("SIMDECK_DB_POOL")
os.environ.setdefault("SIMDECK_DB_POOL", "true")
try:
    django_app = get_asgi_application()  # before importing anything that touches models
finally:
    if _pool_setting is None:
        del os.environ["SIMDECK_DB_POOL"]

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from tasks_app.sockets.auth import APIKeyAuthMiddleware  # noqa: E402
from tasks_app.sockets.origin import SameOriginValidator  # noqa: E402
from tasks_app.sockets.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_app,
        "websocket": SameOriginValidator(
            AuthMiddlewareStack(APIKeyAuthMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)

"""WebSocket authentication: the browser's session, or the CLI's API key."""

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware

from tasks_app.models import APIKey


class APIKeyAuthMiddleware(BaseMiddleware):
    """Use ``Authorization: Bearer <key>`` when the session did not log anyone in."""

    async def __call__(self, scope, receive, send):
        user = scope.get("user")
        if user is None or not user.is_authenticated:
            headers = dict(scope.get("headers", []))
            auth = headers.get(b"authorization", b"").decode()
            if auth.lower().startswith("bearer "):
                found = await database_sync_to_async(APIKey.authenticate)(auth[7:].strip())
                if found is not None:
                    scope = dict(scope, user=found)
        return await super().__call__(scope, receive, send)

"""WebSocket authentication: the browser's session, or the CLI's API key."""

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware

from tasks_app.models import APIKey


class APIKeyAuthMiddleware(BaseMiddleware):
    """Use ``Authorization: Bearer <key>`` when the session did not log anyone in.

    The key's id goes into the scope as ``api_key_id``, so open sockets can
    notice when it is revoked.
    """

    async def __call__(self, scope, receive, send):
        user = scope.get("user")
        if user is None or not user.is_authenticated:
            headers = dict(scope.get("headers", []))
            auth = headers.get(b"authorization", b"").decode()
            if auth.lower().startswith("bearer "):
                key = await database_sync_to_async(APIKey.find)(auth[7:].strip())
                if key is not None:
                    scope = dict(scope, user=key.user, api_key_id=key.pk)
        return await super().__call__(scope, receive, send)

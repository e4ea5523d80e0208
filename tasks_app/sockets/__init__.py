"""What the browser and the CLI connect to over WebSockets: live task pages and logs.

``routing`` maps the paths to the consumers; ``auth`` and ``origin`` say who
is asking and whether the page that opened the socket is this site's;
``consumers`` follow one task (its status and its log, read through
``hub``, one Redis reader per process), ``pages`` the pages that list many
tasks. What they send was published by :mod:`tasks_app.live`.
"""

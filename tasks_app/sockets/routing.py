from django.urls import path

from tasks_app.sockets import consumers, pages

websocket_urlpatterns = [
    path("ws/tasks/<str:task_id>/", consumers.TaskEventsConsumer.as_asgi()),
    path("ws/tasks/<str:task_id>/logs/", consumers.TaskLogConsumer.as_asgi()),
    path("ws/live/tasks/", pages.TaskTableConsumer.as_asgi()),
    path("ws/live/overview/", pages.OverviewConsumer.as_asgi()),
    path("ws/live/groups/<str:ref>/", pages.GroupPageConsumer.as_asgi()),
]

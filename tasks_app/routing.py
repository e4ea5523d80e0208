from django.urls import path

from tasks_app import consumers, live_pages

websocket_urlpatterns = [
    path("ws/tasks/<str:task_id>/", consumers.TaskEventsConsumer.as_asgi()),
    path("ws/tasks/<str:task_id>/logs/", consumers.TaskLogConsumer.as_asgi()),
    path("ws/live/tasks/", live_pages.TaskTableConsumer.as_asgi()),
    path("ws/live/overview/", live_pages.OverviewConsumer.as_asgi()),
    path("ws/live/groups/<str:ref>/", live_pages.GroupPageConsumer.as_asgi()),
]

from django.urls import path

from tasks_app import consumers

websocket_urlpatterns = [
    path("ws/tasks/<str:task_id>/", consumers.TaskEventsConsumer.as_asgi()),
    path("ws/tasks/<str:task_id>/logs/", consumers.TaskLogConsumer.as_asgi()),
]

"""The machine interface's addresses (``/api/machine/v1/…``): see :mod:`tasks_app.api.machines`."""

from django.urls import path

from tasks_app.api import machines as m

urlpatterns = [
    path("join", m.join, name="machine-join"),
    path("online", m.online, name="machine-online"),
    path("heartbeat", m.heartbeat, name="machine-heartbeat"),
    path("offline", m.offline, name="machine-offline"),
    path("claim", m.claim, name="machine-claim"),
    path("questions", m.questions, name="machine-questions"),
    path("answers", m.answers, name="machine-answers"),
    path("tasks/<str:task_id>/move", m.move, name="machine-task-move"),
    path("tasks/<str:task_id>/status", m.status, name="machine-task-status"),
    path("tasks/<str:task_id>/lost", m.lost, name="machine-task-lost"),
    path("tasks/<str:task_id>/exit-code", m.exit_code, name="machine-task-exit-code"),
    path("tasks/<str:task_id>/progress", m.progress, name="machine-task-progress"),
    path("tasks/<str:task_id>/sample", m.sample, name="machine-task-sample"),
    path("tasks/<str:task_id>/disk", m.disk_resized, name="machine-task-disk"),
    path("tasks/<str:task_id>/log", m.task_log, name="machine-task-log"),
    path("tasks/<str:task_id>/input", m.task_input, name="machine-task-input"),
    path("tasks/<str:task_id>/assets", m.assets, name="machine-task-assets"),
    path("tasks/<str:task_id>/assets/file", m.asset_file, name="machine-task-asset-file"),
    path("tasks/<str:task_id>/outputs", m.outputs, name="machine-task-outputs"),
    path("tasks/<str:task_id>/outputs/direct", m.outputs_direct, name="machine-task-outputs-direct"),
    path("tasks/<str:task_id>/outputs/direct/done", m.outputs_direct_done, name="machine-task-outputs-done"),
    path("tasks/<str:task_id>/logs/<str:stream>", m.task_log_file, name="machine-task-log-file"),
]

from django.urls import path

from tasks_app import views
from tasks_app.views import notifications, review

urlpatterns = [
    path("", views.home, name="home"),
    path("overview/", views.overview, name="overview"),
    path("tasks/", views.task_list, name="task-list"),
    path("tasks/bulk", views.task_bulk, name="task-bulk"),
    path("tasks/export.csv", views.task_export, name="task-export"),
    path("tasks/views/", views.saved_view_create, name="saved-view-create"),
    path("tasks/views/<int:view_id>/delete", views.saved_view_delete, name="saved-view-delete"),
    path("tasks/<str:task_id>/", views.task_detail, name="task-detail"),
    path("tasks/<str:task_id>/kill", views.task_kill, name="task-kill"),
    path("tasks/<str:task_id>/resubmit", views.task_resubmit, name="task-resubmit"),
    path("tasks/<str:task_id>/resubmit/edit", views.task_resubmit_edit, name="task-resubmit-edit"),
    path("tasks/<str:task_id>/metadata", views.task_metadata, name="task-metadata"),
    path("tasks/<str:task_id>/metadata/delete", views.task_metadata_delete, name="task-metadata-delete"),
    path("tasks/<str:task_id>/comments", review.task_comments, name="task-comments"),
    path("tasks/<str:task_id>/comments/<int:comment_id>/edit", review.comment_edit, name="comment-edit"),
    path(
        "tasks/<str:task_id>/comments/<int:comment_id>/delete", review.comment_delete, name="comment-delete"
    ),
    path("tasks/<str:task_id>/review", review.task_review, name="task-review"),
    path("tasks/<str:task_id>/logs", views.task_logs, name="task-logs"),
    path("tasks/<str:task_id>/logs/<str:stream>.txt", views.task_log_download, name="task-log-download"),
    path("tasks/<str:task_id>/files", views.task_files, name="task-files"),
    path("tasks/<str:task_id>/files/latest", views.task_latest_file, name="task-latest-file"),
    path("tasks/<str:task_id>/resources", views.task_resources, name="task-resources"),
    path("tasks/<str:task_id>/files/<str:which>.zip", views.task_archive_download, name="task-archive"),
    path("tasks/<str:task_id>/files/<str:which>/<path:path>", views.task_file_download, name="task-file"),
    path(
        "tasks/<str:task_id>/preview/<str:which>/<path:path>",
        views.task_file_preview,
        name="task-file-preview",
    ),
    path("machine-groups/", views.group_list, name="group-list"),
    path("machine-groups/<str:ref>/", views.group_detail, name="group-detail"),
    path("machine-groups/<str:ref>/start", views.group_start, name="group-start"),
    path("machine-groups/<str:ref>/terminate", views.group_terminate, name="group-terminate"),
    path("projects/", views.project_list, name="project-list"),
    path("projects/<str:ref>/members/", views.project_members, name="project-members"),
    path("projects/<str:ref>/members/<str:username>", views.project_member, name="project-member"),
    path("projects/<str:ref>/usage/", views.project_usage, name="project-usage"),
    path("projects/<str:ref>/budget", views.project_budget, name="project-budget"),
    path("projects/<str:ref>/activity/", review.project_activity, name="project-activity"),
    path("statuses/", views.status_reference, name="status-reference"),
    path("health/", views.health, name="health"),
    path("hosts/", views.host_list, name="host-list"),
    path("hosts/tokens/<int:token_id>/revoke", views.join_token_revoke, name="join-token-revoke"),
    path("hosts/machines/<int:machine_id>/revoke", views.host_machine_revoke, name="host-machine-revoke"),
    path("account/", views.account, name="account"),
    path("account/keys/<int:key_id>/revoke", views.api_key_revoke, name="api-key-revoke"),
    path("account/notifications/", notifications.notification_rules, name="notification-rules"),
    path(
        "account/notifications/<int:rule_id>/test", notifications.notification_test, name="notification-test"
    ),
    path(
        "account/notifications/<int:rule_id>/delete",
        notifications.notification_delete,
        name="notification-delete",
    ),
]

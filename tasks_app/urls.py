from django.urls import path

from tasks_app import views

urlpatterns = [
    path("", views.home, name="home"),
    path("tasks/", views.task_list, name="task-list"),
    path("tasks/<str:task_id>/", views.task_detail, name="task-detail"),
    path("tasks/<str:task_id>/kill", views.task_kill, name="task-kill"),
    path("machine-groups/", views.group_list, name="group-list"),
    path("statuses/", views.status_reference, name="status-reference"),
]

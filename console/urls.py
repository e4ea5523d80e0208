from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from tasks_app.accounts import ThrottledAdminLoginForm
from tasks_app.api.endpoints import api
from tasks_app.views import accounts

# The admin site's own login is another door for guessing passwords.
admin.site.login_form = ThrottledAdminLoginForm

urlpatterns = [
    path("", include("tasks_app.urls")),
    path("api/v1/", api.urls),
    path("api/machine/v1/", include("tasks_app.api.machine_urls")),
    path("accounts/login/", accounts.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", accounts.PasswordChangeView.as_view(), name="password_change"),
    path(
        "accounts/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("people/", accounts.people, name="people"),
    path("admin/", admin.site.urls),
]

handler400 = "tasks_app.api.endpoints.bad_request"
handler404 = "tasks_app.api.endpoints.not_found"

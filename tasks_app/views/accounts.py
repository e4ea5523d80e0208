"""Logging in, changing one's password, and the People page, where staff create accounts."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from tasks_app.accounts import NewUserForm, ThrottledLoginForm, ThrottledPasswordChangeForm, create_user

TOO_MANY_REQUESTS = 429


class Throttled:
    """A password form that a run of wrong guesses locks: it answers 429 with when to try again."""

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.lockout:
            response.status_code = TOO_MANY_REQUESTS
            response["Retry-After"] = str(form.lockout.seconds_left)
        return response


class LoginView(Throttled, auth_views.LoginView):
    form_class = ThrottledLoginForm
    redirect_authenticated_user = True


class PasswordChangeView(Throttled, auth_views.PasswordChangeView):
    form_class = ThrottledPasswordChangeForm

    def get_form_kwargs(self):
        return super().get_form_kwargs() | {"request": self.request}


@login_required
@require_http_methods(["GET", "POST"])
def people(request: HttpRequest) -> HttpResponse:
    """Every account, and a form for a new one (its password shown once)."""
    if not request.user.is_staff:
        # Who has an account is not for everyone to learn.
        raise Http404("No such page.")
    form = NewUserForm(request.POST or None)
    created = password = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            created, password = create_user(data["username"], data["email"], is_staff=data["is_staff"])
            form = NewUserForm()
        else:
            status = 422
    users = (
        get_user_model()
        .objects.order_by("username")
        .only("username", "email", "is_staff", "is_active", "last_login", "date_joined")
    )
    context = {"form": form, "users": users, "created": created, "password": password}
    response = render(request, "people.html", context, status=status)
    # The new password is in this one answer only: no cache may keep it.
    response["Cache-Control"] = "no-store"
    return response

"""People: logging in and changing a password (both throttled), and creating accounts.

The console's People page and ``manage.py createuser`` both create users
through :func:`create_user`, so the same checks apply to each.
"""

from __future__ import annotations

import secrets

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm
from django.core.exceptions import ValidationError
from django.db import transaction

from tasks_app import login_throttle

# Long enough to be safe unchanged; users may change it on the password page.
GENERATED_PASSWORD_BYTES = 15


class ThrottledLoginForm(AuthenticationForm):
    """Django's login form, refusing for a while after repeated failures."""

    lockout: login_throttle.Lockout | None = None

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        address = login_throttle.client_address(self.request)
        self.lockout = login_throttle.lockout(username, address)
        if self.lockout:
            raise ValidationError(self.lockout.message, code="throttled")
        try:
            cleaned = super().clean()
        except ValidationError as exc:
            if getattr(exc, "code", None) != "invalid_login":
                raise
            self.lockout = login_throttle.record_failure(username, address)
            if self.lockout:
                raise ValidationError(self.lockout.message, code="throttled") from None
            raise
        login_throttle.record_success(username, address)
        return cleaned


class ThrottledAdminLoginForm(ThrottledLoginForm, AdminAuthenticationForm):
    """The admin site's login, under the same throttle: it is another door for guessing."""


class ThrottledPasswordChangeForm(PasswordChangeForm):
    """Django's password change form; its current password counts failures as the login does."""

    lockout: login_throttle.Lockout | None = None

    def __init__(self, user, *args, request=None, **kwargs):
        super().__init__(user, *args, **kwargs)
        self.request = request

    def clean_old_password(self) -> str:
        username = self.user.get_username()
        address = login_throttle.client_address(self.request)
        self.lockout = login_throttle.lockout(username, address)
        if self.lockout:
            raise ValidationError(self.lockout.change_message, code="throttled")
        try:
            old_password = super().clean_old_password()
        except ValidationError:
            self.lockout = login_throttle.record_failure(username, address)
            if self.lockout:
                raise ValidationError(self.lockout.change_message, code="throttled") from None
            raise
        login_throttle.record_success(username, address)
        return old_password


class NewUserForm(forms.Form):
    username = forms.CharField(max_length=150, label="Username", help_text="Letters, digits and @.+-_")
    email = forms.EmailField(required=False, label="Email")
    is_staff = forms.BooleanField(
        required=False, label="Staff", help_text="Sees every project and may create people."
    )

    def clean_username(self) -> str:
        username = self.cleaned_data["username"].strip()
        User = get_user_model()
        try:
            User.username_validator(username)
        except ValidationError:
            raise ValidationError(
                "A username may hold only letters, digits and the characters @ . + - _."
            ) from None
        if User.objects.filter(username__iexact=username).exists():
            raise ValidationError(f"There is already a user named {username!r}; choose another name.")
        return username


def generate_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def create_user(username: str, email: str = "", *, is_staff: bool = False, password: str | None = None):
    """Create an account; returns ``(user, password)``, the password generated when not given.

    Raises ``ValidationError`` for a taken or malformed username or a weak password.
    """
    form = NewUserForm({"username": username, "email": email, "is_staff": is_staff})
    if not form.is_valid():
        raise ValidationError([e for errors in form.errors.values() for e in errors])
    User = get_user_model()
    user = User(username=form.cleaned_data["username"], email=form.cleaned_data["email"], is_staff=is_staff)
    if password is None:
        password = generate_password()
    else:
        password_validation.validate_password(password, user)
    user.set_password(password)
    with transaction.atomic():
        user.save()
    return user, password

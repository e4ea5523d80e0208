"""Logging in (and its throttle), changing one's password, and creating accounts from the
People page and from ``manage.py createuser``."""

from __future__ import annotations

import io
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from tasks_app import login_throttle

pytestmark = pytest.mark.django_db

ADDRESS = "127.0.0.1"  # the test client's REMOTE_ADDR


@pytest.fixture
def throttle(settings):
    """A quick throttle; failures counted for the test's names are forgotten afterwards."""
    settings.SIMDECK_LOGIN_FAILURES = 3
    settings.SIMDECK_LOGIN_LOCKOUT_SECONDS = 3
    settings.SIMDECK_LOGIN_WINDOW_SECONDS = 60
    names = ["alice", "bob", "mallory"]
    for name in names:
        login_throttle.reset(name, ADDRESS)
    yield settings
    for name in names:
        login_throttle.reset(name, ADDRESS)


def login(client: Client, username: str, password: str):
    return client.post(reverse("login"), {"username": username, "password": password})


# -- logging in ------------------------------------------------------------------


def test_the_login_page_logs_in_and_goes_to_the_tasks(alice, throttle):
    client = Client()
    page = client.get(reverse("login"))
    assert page.status_code == 200 and b'name="username"' in page.content
    answer = login(client, "alice", "wonderland-42")
    assert answer.status_code == 302 and answer["Location"] == reverse("task-list")


def test_a_wrong_password_says_so_without_telling_which_part_was_wrong(alice, throttle):
    answer = login(Client(), "alice", "nope")
    assert answer.status_code == 200
    assert b"Please enter a correct username and password" in answer.content


def test_repeated_failures_lock_that_name_from_that_address_for_a_while(alice, bob, throttle):
    client = Client()
    for _ in range(2):
        assert login(client, "alice", "guess").status_code == 200
    locked = login(client, "alice", "guess")
    assert locked.status_code == 429
    assert b"Too many failed logins" in locked.content
    assert 0 < int(locked["Retry-After"]) <= 3
    # Even the right password is refused until the lockout ends: guessing learns nothing.
    assert login(client, "alice", "wonderland-42").status_code == 429
    # Another name from the same address is not affected.
    assert login(Client(), "bob", "builder-42").status_code == 302
    time.sleep(3.5)
    assert login(client, "alice", "wonderland-42").status_code == 302


def test_a_successful_login_forgets_earlier_failures(alice, throttle):
    client = Client()
    for _ in range(2):
        login(client, "alice", "guess")
    assert login(client, "alice", "wonderland-42").status_code == 302
    for _ in range(2):
        assert login(Client(), "alice", "guess").status_code == 200


def test_the_throttle_counts_names_regardless_of_case(alice, throttle):
    for name in ("alice", "ALICE", "Alice"):
        answer = login(Client(), name, "guess")
    assert answer.status_code == 429


def test_the_admin_login_is_throttled_too(alice, throttle):
    url = reverse("admin:login")
    for _ in range(3):
        answer = Client().post(url, {"username": "mallory", "password": "x", "next": "/admin/"})
    assert b"Too many failed logins" in answer.content


def test_spraying_many_names_from_one_address_is_capped(throttle):
    throttle.SIMDECK_LOGIN_FAILURES_PER_ADDRESS = 4
    names = [f"nobody{i}" for i in range(5)]
    try:
        answers = [login(Client(), name, "guess").status_code for name in names]
        assert answers == [200, 200, 200, 429, 429]
    finally:
        for name in names:
            login_throttle.reset(name, ADDRESS)


def test_behind_a_proxy_the_configured_header_names_the_client(settings, alice, throttle):
    settings.SIMDECK_CLIENT_IP_HEADER = "HTTP_X_FORWARDED_FOR"
    try:
        for _ in range(3):
            login(Client(HTTP_X_FORWARDED_FOR="spoofed, 198.51.100.7"), "alice", "guess")
        assert login(Client(HTTP_X_FORWARDED_FOR="198.51.100.7"), "alice", "x").status_code == 429
        assert login(Client(HTTP_X_FORWARDED_FOR="198.51.100.8"), "alice", "wonderland-42").status_code == 302
    finally:
        login_throttle.reset("alice", "198.51.100.7")


# -- the password page -----------------------------------------------------------


def test_changing_the_password(alice):
    client = Client()
    client.force_login(alice)
    page = client.get(reverse("password_change"))
    assert page.status_code == 200 and b"Change your password" in page.content
    weak = client.post(
        reverse("password_change"),
        {"old_password": "wonderland-42", "new_password1": "12345678", "new_password2": "12345678"},
    )
    assert weak.status_code == 200 and b"This password is entirely numeric" in weak.content
    done = client.post(
        reverse("password_change"),
        {
            "old_password": "wonderland-42",
            "new_password1": "rabbit-hole-77",
            "new_password2": "rabbit-hole-77",
        },
    )
    assert done.status_code == 302 and done["Location"] == reverse("password_change_done")
    alice.refresh_from_db()
    assert alice.check_password("rabbit-hole-77")
    # The session that changed it stays logged in.
    assert client.get(reverse("account")).status_code == 200


def test_the_password_page_needs_a_login():
    answer = Client().get(reverse("password_change"))
    assert answer.status_code == 302 and answer["Location"].startswith(reverse("login"))


# -- creating accounts -------------------------------------------------------------


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_user("root", password="admin-pass-42", is_staff=True)


def test_staff_create_an_account_and_see_its_password_once(admin_user):
    client = Client()
    client.force_login(admin_user)
    answer = client.post(reverse("people"), {"username": "carol", "email": "carol@example.org"})
    assert answer.status_code == 200
    assert answer["Cache-Control"] == "no-store"
    html = answer.content.decode()
    password = html.split('id="new-password" class="mono" readonly value="')[1].split('"')[0]
    carol = get_user_model().objects.get(username="carol")
    assert carol.check_password(password) and not carol.is_staff and carol.email == "carol@example.org"
    assert password not in client.get(reverse("people")).content.decode()
    assert Client().login(username="carol", password=password)


def test_a_taken_or_malformed_username_is_refused_on_the_form(admin_user, alice):
    client = Client()
    client.force_login(admin_user)
    taken = client.post(reverse("people"), {"username": "ALICE"})
    assert taken.status_code == 422 and "There is already a user named" in taken.content.decode()
    bad = client.post(reverse("people"), {"username": "no spaces"})
    assert bad.status_code == 422 and "only letters, digits" in bad.content.decode()


def test_people_is_for_staff_only(alice):
    client = Client()
    client.force_login(alice)
    assert client.get(reverse("people")).status_code == 404
    assert client.post(reverse("people"), {"username": "sneaky"}).status_code == 404
    assert not get_user_model().objects.filter(username="sneaky").exists()
    assert Client().get(reverse("people")).status_code == 302


def test_createuser_prints_a_generated_password_as_its_last_line(db):
    out = io.StringIO()
    call_command("createuser", "dora", "dora@example.org", "--staff", stdout=out)
    password = out.getvalue().strip().splitlines()[-1]
    dora = get_user_model().objects.get(username="dora")
    assert dora.is_staff and dora.email == "dora@example.org" and dora.check_password(password)


def test_createuser_reads_a_password_from_stdin(db):
    out = io.StringIO()
    call_command("createuser", "eve", "--password-stdin", stdin=io.StringIO("correct-horse-9\n"), stdout=out)
    assert "correct-horse-9" not in out.getvalue()
    assert get_user_model().objects.get(username="eve").check_password("correct-horse-9")


def test_createuser_explains_what_is_wrong(alice):
    with pytest.raises(CommandError, match="There is already a user named 'alice'"):
        call_command("createuser", "alice")
    with pytest.raises(CommandError, match="too short"):
        call_command("createuser", "frank", "--password-stdin", stdin=io.StringIO("abc\n"))
    with pytest.raises(CommandError, match="No password arrived"):
        call_command("createuser", "frank", "--password-stdin", stdin=io.StringIO(""))
    assert not get_user_model().objects.filter(username="frank").exists()

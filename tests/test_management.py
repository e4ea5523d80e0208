"""Management commands operators script against."""

import io

import pytest
from django.core.management import CommandError, call_command

from tasks_app.models import APIKey

pytestmark = pytest.mark.django_db


def test_createapikey_prints_a_working_key_as_its_last_line(alice):
    out = io.StringIO()
    call_command("createapikey", "alice", "--name", "laptop", stdout=out)
    secret = out.getvalue().strip().splitlines()[-1]
    assert APIKey.authenticate(secret) == alice
    assert APIKey.objects.get(user=alice).name == "laptop"


def test_createapikey_names_the_fix_for_an_unknown_user(db):
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("createapikey", "nobody")

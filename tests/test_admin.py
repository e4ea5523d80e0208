"""The admin site: staff see projects, quotas and keys; keys are revoked there, members are not edited."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tasks_app import teams
from tasks_app.models import APIKey, Membership, Project, Quota

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, django_user_model):
    admin = django_user_model.objects.create_user("root", password="pw", is_staff=True, is_superuser=True)
    client.force_login(admin)
    return admin


def test_staff_see_projects_with_their_members_quotas_and_keys(client, staff, alice, bob):
    project = Project.objects.create(name="heat", created_by=alice)
    Membership.objects.create(project=project, user=alice, role="maintainer")
    teams.add_member(project, "bob", "viewer", actor=alice)
    Quota.objects.create(project=project, max_machines=4)
    APIKey.issue(alice, "laptop")

    page = client.get(reverse("admin:tasks_app_project_change", args=[project.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "bob" in html and "Viewer" in html
    # Members are changed where the audit trail records it, not here.
    assert 'name="memberships-0-role"' not in html
    quotas = client.get(reverse("admin:tasks_app_quota_changelist")).content.decode()
    assert "quota of heat" in quotas
    keys = client.get(reverse("admin:tasks_app_apikey_changelist")).content.decode()
    assert "laptop" in keys
    assert client.get(reverse("admin:tasks_app_apikey_add")).status_code == 403


def test_a_key_revoked_in_the_admin_stops_working_at_once(client, staff, alice):
    key, secret = APIKey.issue(alice, "laptop")
    assert client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    answer = client.post(
        reverse("admin:tasks_app_apikey_changelist"),
        {"action": "revoke", "_selected_action": [key.pk]},
        follow=True,
    )
    assert "1 key(s) revoked." in answer.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None
    client.logout()
    assert client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_a_quota_for_both_a_user_and_a_project_is_refused_with_a_message(client, staff, alice):
    project = Project.objects.create(name="heat", created_by=alice)
    answer = client.post(
        reverse("admin:tasks_app_quota_add"),
        {"user": alice.pk, "project": project.pk, "max_machines": 2},
    )
    assert answer.status_code == 200  # the form again, with the error
    assert "A quota is for one user or for one project: choose one of the two." in answer.content.decode()
    assert not Quota.objects.exists()

"""A project's storage through the API: what each person may see and change, on the local disk and S3.

Alice is a maintainer of her projects; Bob is in none of them until added.
"""

from __future__ import annotations

import pytest
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse

from tasks_app import access, services, storage
from tasks_app.models import APIKey, Membership, Quota, Role, StoredFile, Task, TaskAsset
from tests.test_console_pages import HAPPY, make_task, store_input
from tests.test_downloads_s3 import follow, store_outputs

pytestmark = pytest.mark.django_db

STORAGE = "/api/v1/storage"


def put(api, path: str, data: bytes, project: str | None = None, **headers):
    query = f"?project={project}" if project else ""
    return api.put(
        f"{STORAGE}/files/{path}{query}",
        data=data,
        content_type="application/octet-stream",
        HTTP_X_FILE_SIZE=str(len(data)),
        **headers,
    )


def listing(api, **params) -> dict:
    response = api.get(STORAGE, params)
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def bob_api(bob):
    client = Client()
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {APIKey.issue(bob, 'tests')[1]}"
    return client


def test_uploaded_files_are_listed_by_folder_with_sizes_and_a_total(api, alice):
    assert put(api, "meshes/coarse.msh", b"x" * 300).status_code == 200
    assert put(api, "meshes/fine/fine.msh", b"y" * 1000).status_code == 200
    assert put(api, "notes.txt", b"hello").status_code == 200
    root = listing(api)
    assert root["project"] == "alice-default"
    assert [(i["name"], i["is_dir"], i["size_bytes"]) for i in root["items"]] == [
        ("meshes", True, 1300),
        ("notes.txt", False, 5),
    ]
    assert root["total_bytes"] == 1305
    by_name = listing(api, path="meshes", order_by="name", sort_order="asc")
    assert [(i["path"], i["size_bytes"]) for i in by_name["items"]] == [
        ("meshes/coarse.msh", 300),
        ("meshes/fine", 1000),
    ]
    assert listing(api, path="/", max_results=1)["count"] == 2
    assert len(listing(api, max_results=1)["items"]) == 1
    everything = listing(api, path="meshes", recursive=True)["items"]
    assert [i["path"] for i in everything] == ["meshes/coarse.msh", "meshes/fine/fine.msh"]
    assert api.get(f"{STORAGE}/size").json() == {
        "project": "alice-default",
        "total_bytes": 1305,
        "uploaded_bytes": 1305,
        "task_bytes": 0,
        "max_storage_gb": None,
    }


def test_a_file_uploaded_again_replaces_the_first_and_reads_back(api):
    put(api, "data/a.csv", b"1,2\n")
    put(api, "data/a.csv", b"1,2\n3,4\n")
    response = api.get(f"{STORAGE}/files/data/a.csv")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"1,2\n3,4\n"
    assert StoredFile.objects.get(path="data/a.csv").size == 8


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("../escape.txt", "climbs out with '..'"),
        ("a/../../b", "climbs out with '..'"),
        ("%2Fetc%2Fpasswd", "is absolute"),
        ("c:/windows/x", "is absolute"),
        ("abcdefghijklmnopqrstuvwxy/outputs/x", "shape of a task id"),
    ],
)
def test_paths_that_would_leave_the_projects_storage_are_refused(api, path, said):
    response = put(api, path, b"data")
    assert response.status_code == 400, response.content
    assert said in response.json()["message"]
    assert not StoredFile.objects.exists()


def test_a_file_cannot_hold_a_folder_nor_a_folder_become_a_file(api):
    put(api, "a/b.txt", b"1")
    under_file = put(api, "a/b.txt/c.txt", b"2")
    assert under_file.status_code == 409
    assert "'a/b.txt' is a file" in under_file.json()["message"]
    over_folder = put(api, "a", b"3")
    assert over_folder.status_code == 409
    assert "'a' is a folder" in over_folder.json()["message"]


def test_an_upload_cut_short_stores_nothing(api):
    response = api.put(
        f"{STORAGE}/files/x.bin", data=b"abc", content_type="application/octet-stream", HTTP_X_FILE_SIZE="10"
    )
    assert response.status_code == 400
    assert "cut short: 3 of 10 bytes" in response.json()["message"]
    assert not StoredFile.objects.exists()


def test_copies_and_removals_of_files_and_folders(api):
    put(api, "runs/one/in.txt", b"one")
    put(api, "runs/one/deep/b.txt", b"bee")
    copied = api.post(f"{STORAGE}/copy", {"source": "runs/one", "target": "runs/two"}, "application/json")
    assert copied.json() == {"project": "alice-default", "copied": 2, "size_bytes": 6}
    got = api.get(f"{STORAGE}/files/runs/two/deep/b.txt")
    assert b"".join(got.streaming_content) == b"bee"
    removed = api.delete(f"{STORAGE}/files/runs/one")
    assert removed.json() == {"project": "alice-default", "removed": 2, "freed_bytes": 6}
    assert [i["path"] for i in listing(api, path="runs")["items"]] == ["runs/two"]
    assert api.delete(f"{STORAGE}/files/runs/one").status_code == 404
    folder = api.get(f"{STORAGE}/files/runs/two")
    assert folder.status_code == 400 and "is a folder" in folder.json()["message"]


def test_a_tasks_files_are_a_read_only_folder_named_by_its_id(api, alice, group):
    task = make_task(alice, group, to=HAPPY)
    store_input(task, {"run.sh": b"echo hi\n"})
    store_outputs(task, {"result.txt": b"42\n", "frames/0001.vtk": b"v" * 100})
    root = listing(api, project="dambreak")
    assert [(i["name"], i["is_dir"]) for i in root["items"]] == [(task.id, True)]
    inside = listing(api, project="dambreak", path=task.id, order_by="name", sort_order="asc")
    assert [i["name"] for i in inside["items"]] == ["input", "outputs"]
    outputs = listing(api, project="dambreak", path=f"{task.id}/outputs", order_by="name", sort_order="asc")
    assert [(i["name"], i["size_bytes"]) for i in outputs["items"]] == [("frames", 100), ("result.txt", 3)]
    one = api.get(f"{STORAGE}/files/{task.id}/outputs/result.txt?project=dambreak")
    assert b"".join(one.streaming_content) == b"42\n"
    whole = api.get(f"{STORAGE}/files/{task.id}/outputs?project=dambreak")
    assert whole.status_code == 200 and whole["Content-Disposition"].endswith(f'{task.id}-outputs.zip"')
    copied = api.post(
        f"{STORAGE}/copy",
        {"project": "dambreak", "source": f"{task.id}/outputs/frames", "target": "kept/frames"},
        "application/json",
    )
    assert copied.json()["copied"] == 1
    assert StoredFile.objects.get(path="kept/frames/0001.vtk").size == 100
    # The task's folder cannot be written into; removing it removes the task's stored files.
    refused = put(api, f"{task.id}/outputs/new.txt", b"x", project="dambreak")
    assert refused.status_code == 400
    removed = api.delete(f"{STORAGE}/files/{task.id}?project=dambreak")
    assert removed.status_code == 200 and removed.json()["removed"] == 2
    task.refresh_from_db()
    assert task.output_path == task.input_path == ""


def test_storage_of_another_teams_project_does_not_exist_for_an_outsider(api, bob_api, alice, group):
    put(api, "secret/plan.txt", b"plan", project="dambreak")
    for response in (
        bob_api.get(STORAGE, {"project": "dambreak"}),
        bob_api.get(f"{STORAGE}/files/secret/plan.txt?project=dambreak"),
        bob_api.delete(f"{STORAGE}/files/secret?project=dambreak"),
        put(bob_api, "mine.txt", b"x", project="dambreak"),
    ):
        assert response.status_code == 404, response.content
        assert "No project named 'dambreak'" in response.json()["message"]
    # Bob's own storage is his personal project's, empty.
    assert listing(bob_api)["items"] == []
    assert StoredFile.objects.filter(path="secret/plan.txt").count() == 1


def test_a_viewer_reads_the_storage_and_a_member_changes_it(api, bob_api, alice, bob, group):
    put(api, "shared/in.txt", b"in", project="dambreak")
    Membership.objects.create(project=group.project, user=bob, role=Role.VIEWER, added_by=alice)
    assert [i["name"] for i in listing(bob_api, project="dambreak")["items"]] == ["shared"]
    refused = put(bob_api, "shared/bob.txt", b"b", project="dambreak")
    assert refused.status_code == 403
    assert "To change its storage in project 'dambreak' you need to be a member" in refused.json()["message"]
    assert bob_api.delete(f"{STORAGE}/files/shared?project=dambreak").status_code == 403
    Membership.objects.filter(user=bob).update(role=Role.MEMBER)
    assert put(bob_api, "shared/bob.txt", b"b", project="dambreak").status_code == 200


def test_the_storage_quota_refuses_an_upload_before_storing_it_and_shows_what_is_used(api, alice):
    put(api, "a.bin", b"x" * 600)
    Quota.objects.create(user=alice, max_storage_gb=1000 / 1000**3)  # 1000 bytes
    refused = put(api, "b.bin", b"y" * 600)
    assert refused.status_code == 403
    body = refused.json()
    assert body["error"] == "quota_exceeded"
    assert "User 'alice' may store at most" in body["message"] and "simdeck storage remove" in body["message"]
    assert not StoredFile.objects.filter(path="b.bin").exists()
    assert put(api, "a.bin", b"z" * 900).status_code == 200  # replacing counts only the difference
    quotas = api.get("/api/v1/quotas").json()
    storage_quota = next(q for q in quotas["quotas"] if q["id"] == "max_storage_gb")
    assert storage_quota["in_use"] == pytest.approx(900 / 1000**3)


def test_signed_urls_point_at_the_api_where_the_server_keeps_files(api):
    put(api, "d/a.txt", b"a")
    urls = api.post(f"{STORAGE}/signed-urls", {"paths": ["d/a.txt"]}, "application/json").json()["urls"]
    assert urls == ["http://testserver/api/v1/storage/files/d/a.txt?project=alice-default"]
    missing = api.post(f"{STORAGE}/signed-urls", {"paths": ["nope.txt"]}, "application/json")
    assert missing.status_code == 404 and "Nothing is stored at 'nope.txt'" in missing.json()["message"]


def test_in_a_bucket_files_are_stored_and_downloaded_through_presigned_urls(s3_server, s3_env, api, alice):
    put(api, "bucket/data.bin", b"\x00\x01" * 1000)
    name = storage.project_file_name(access.personal_project(alice).pk, "bucket/data.bin")
    assert default_storage.exists(name)
    fetched = follow(api.get(f"{STORAGE}/files/bucket/data.bin"), s3_server)
    assert fetched.content == b"\x00\x01" * 1000
    urls = api.post(f"{STORAGE}/signed-urls", {"paths": ["bucket/data.bin"]}, "application/json").json()
    assert urls["urls"][0].startswith(s3_server.endpoint) and "X-Amz-Signature=" in urls["urls"][0]
    copied = api.post(f"{STORAGE}/copy", {"source": "bucket", "target": "again"}, "application/json")
    assert copied.status_code == 200
    assert follow(api.get(f"{STORAGE}/files/again/data.bin"), s3_server).content == b"\x00\x01" * 1000
    api.delete(f"{STORAGE}/files/bucket")
    assert not default_storage.exists(name)


# -- remote assets ---------------------------------------------------------------------------------


def submit(api, group, **extra):
    body = {
        "simulator": "commands",
        "machine_group": group.name,
        "input_files": ["run.sh"],
        "parameters": {"commands": ["sh run.sh"]},
        **extra,
    }
    return api.post("/api/v1/tasks", body, "application/json")


def test_a_task_takes_another_tasks_outputs_and_uploaded_files_and_the_chain_reads_both_ways(
    api, alice, started_group
):
    first = make_task(alice, started_group, to=HAPPY)
    store_outputs(first, {"result.txt": b"42\n", "frames/0001.vtk": b"v"})
    put(api, "meshes/coarse.msh", b"mesh")
    response = submit(
        api,
        started_group,
        remote_assets=[f"{first.id}/outputs/frames", f"{first.id}/outputs/result.txt", "meshes"],
        storage_dir="sweep-1",
    )
    assert response.status_code == 201, response.content
    second = Task.objects.get(pk=response.json()["id"])
    assert second.storage_dir == "sweep-1"
    assert [(a.path, a.source_task_id) for a in second.assets.all()] == [
        (f"{first.id}/outputs/frames", first.id),
        (f"{first.id}/outputs/result.txt", first.id),
        ("meshes", None),
    ]
    detail = api.get(f"/api/v1/tasks/{second.id}").json()
    assert detail["inputs_from"] == [first.id] and detail["storage_dir"] == "sweep-1"
    assert api.get(f"/api/v1/tasks/{first.id}").json()["used_by"] == [second.id]
    # The console's task pages link the chain both ways.
    browser = Client()
    browser.force_login(alice)
    page = browser.get(reverse("task-detail", args=[first.id])).content.decode()
    assert f'Used by <a class="mono" href="/tasks/{second.id}/">{second.id}</a>' in page
    page = browser.get(reverse("task-detail", args=[second.id])).content.decode()
    assert f'Inputs from <a class="mono" href="/tasks/{first.id}/">{first.id}</a>' in page
    assert "sweep-1/" in page and "meshes" in page


def test_every_task_of_a_sweep_takes_its_remote_assets_storage_dir_and_cleanup(
    api, alice, started_group, tmp_path, monkeypatch, no_broker
):
    from simdeck import simulators
    from tests.test_api_batch import _ThroughTestClient

    first = make_task(alice, started_group, to=HAPPY)
    store_outputs(first, {"frames/0001.vtk": b"v"})
    put(api, "meshes/coarse.msh", b"mesh")
    monkeypatch.setenv("SIMDECK_URL", "http://simdeck.invalid")
    (tmp_path / "run.sh").write_text("ls frames meshes\n")
    (tmp_path / "tidy.sh").write_text("rm -rf frames\nrm -rf meshes\n")
    sim = simulators.Commands()
    sim._client = _ThroughTestClient(api)
    tasks = sim.run_many(
        tmp_path,
        [{"commands": [f"sh run.sh {n}"]} for n in range(3)],
        on="lab",
        remote_assets=[f"{first.id}/outputs/frames", "meshes"],
        storage_dir="sweep-2",
        on_finish_cleanup="tidy.sh",
    )
    made = Task.objects.filter(pk__in=[t.id for t in tasks])
    assert made.count() == 3
    for task in made:
        assert task.storage_dir == "sweep-2" and task.cleanup_commands == ["sh tidy.sh"]
        assert [(a.path, a.source_task_id) for a in task.assets.all()] == [
            (f"{first.id}/outputs/frames", first.id),
            ("meshes", None),
        ]
    assert api.get(f"/api/v1/tasks/{first.id}").json()["used_by"] == sorted(t.id for t in tasks)

    # Checked once for all, as for one task: a bad one refuses the batch and makes nothing.
    body = {
        "machine_group": "lab",
        "input_files": ["run.sh"],
        "tasks": [{"simulator": "commands", "parameters": {"commands": ["sh run.sh"]}}] * 2,
    }
    for extra, field in [
        ({"remote_assets": ["not-uploaded/x"]}, "remote_assets"),
        ({"storage_dir": "../up"}, "storage_dir"),
        ({"on_finish_cleanup": ["a\nb"]}, "on_finish_cleanup.0"),
    ]:
        refused = api.post("/api/v1/tasks/batch", body | extra, "application/json")
        assert refused.status_code in (400, 404) and refused.json()["field"] == field, refused.content
    assert Task.objects.count() == 4


@pytest.mark.parametrize(
    ("asset", "status", "said"),
    [
        ("zzzzzzzzzzzzzzzzzzzzzzzzz/outputs/x", 404, "no task with id 'zzzzzzzzzzzzzzzzzzzzzzzzz'"),
        ("not-uploaded/mesh.msh", 404, "nothing is stored there in project"),
        ("../etc/passwd", 400, "climbs out with '..'"),
        ("run.sh", 404, "nothing is stored there"),
    ],
)
def test_a_remote_asset_that_cannot_be_read_is_refused_and_nothing_is_made(
    api, alice, started_group, asset, status, said
):
    before = Task.objects.count()
    response = submit(api, started_group, remote_assets=[asset])
    assert response.status_code == status, response.content
    body = response.json()
    assert body["field"] == "remote_assets" and said in body["message"]
    assert Task.objects.count() == before and not TaskAsset.objects.exists()


def test_another_teams_task_outputs_are_refused_as_unknown(api, alice, bob, started_group):
    theirs = services.create_group(bob, machine_type="c2-standard-4", name="bobs", project="bobs-team")
    secret = make_task(bob, theirs, to=HAPPY)
    store_outputs(secret)
    response = submit(api, started_group, remote_assets=[f"{secret.id}/outputs"])
    assert response.status_code == 404
    assert f"no task with id {secret.id!r}, or it is not yours to see" in response.json()["message"]
    assert not Task.objects.filter(owner=alice).exists()


@pytest.mark.parametrize(
    ("storage_dir", "said"),
    [("../up", "climbs out with '..'"), ("/abs", "is absolute"), ("taken.txt", "'taken.txt' is a file")],
)
def test_a_storage_dir_outside_the_storage_or_on_a_file_is_refused(api, started_group, storage_dir, said):
    put(api, "taken.txt", b"t")
    response = submit(api, started_group, storage_dir=storage_dir)
    assert response.status_code in (400, 409), response.content
    assert response.json()["field"] == "storage_dir" and said in response.json()["message"]
    assert not Task.objects.exists()


def test_an_asset_landing_on_an_input_file_is_refused(api, alice, started_group):
    put(api, "run.sh", b"echo other\n")
    response = submit(api, started_group, remote_assets=["run.sh"])
    assert response.status_code == 409
    assert "placed as 'run.sh', which the input folder has already" in response.json()["message"]


def test_a_task_whose_outputs_are_not_stored_yet_cannot_be_used(api, alice, started_group):
    running = make_task(alice, started_group, to=HAPPY[:3])
    response = submit(api, started_group, remote_assets=[f"{running.id}/outputs"])
    assert response.status_code == 404
    assert "outputs are stored when it finishes" in response.json()["message"]


def test_the_root_shows_the_first_task_folders_and_counts_them_all(api, alice, group):
    sizes = {}
    for n in (1, 3, 2):
        task = make_task(alice, group, to=HAPPY)
        store_outputs(task, {"r.txt": b"x" * 100 * n})
        sizes[task.id] = Task.objects.get(pk=task.id).output_size
    put(api, "notes.txt", b"n", project="dambreak")
    root = listing(api, project="dambreak", max_results=2)
    biggest = sorted(sizes, key=sizes.get, reverse=True)[:2]
    assert [i["name"] for i in root["items"]] == biggest
    assert root["count"] == 4
    assert root["total_bytes"] == sum(sizes.values()) + 1
    by_name = listing(api, project="dambreak", order_by="name", sort_order="asc", max_results=10)
    assert [i["name"] for i in by_name["items"]] == sorted(["notes.txt", *sizes])
    assert api.get(STORAGE, {"order_by": "colour"}).json()["message"] == (
        "order_by is one of size, creation_time, name, not 'colour'."
    )

"""Every number and text the services take, generated: refused by name or stored as given.

Hypothesis sends what a person or a program could: floats with their NaN and
infinities, huge integers, booleans, texts holding NUL characters and lone
surrogates. Each value is either refused with :class:`services.Refused`
naming its field, or stored within its documented range and read back
unchanged; nothing else may happen. Each example runs in a transaction
rolled back after it, on the real database.
"""

from __future__ import annotations

import math

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks_app import housekeeping, inputs, services
from tasks_app.models import MachineGroup, Task
from tasks_app.templatetags.simdeck import time_left

pytestmark = pytest.mark.django_db

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, 64, 65, 65536, 525600, 525600.0001, 1e308, float("inf"), float("nan")]),
)
# Every code point, surrogates and control characters included.
TEXTS = st.text(st.characters(exclude_categories=()), max_size=20)


class Rollback(Exception):
    pass


def each_in_a_rollback(run) -> None:
    try:
        with transaction.atomic():
            run()
            raise Rollback
    except Rollback:
        pass


@EXAMPLES
@given(field=st.sampled_from(sorted(inputs.NUMBERS)), value=NUMBERS)
def test_a_number_is_within_its_range_or_refused_by_name(field, value):
    bounds = inputs.NUMBERS[field]
    try:
        checked = inputs.number(field, value)
    except services.Refused as exc:
        assert exc.field == field and str(exc).startswith(field) and exc.status == 400
        assert (
            isinstance(value, float)
            and not math.isfinite(value)
            or not bounds.contains(value)
            or (bounds.integer and value != int(value))
        )
    else:
        assert math.isfinite(checked) and bounds.contains(checked) and checked == value


@EXAMPLES
@given(max_idle_time=NUMBERS, auto_terminate_minutes=NUMBERS, data_disk_gb=NUMBERS)
def test_a_group_keeps_only_numbers_in_range(alice, max_idle_time, auto_terminate_minutes, data_disk_gb):
    def run():
        try:
            group = services.create_group(
                alice,
                machine_type="e2-micro",
                max_idle_time=max_idle_time,
                auto_terminate_minutes=auto_terminate_minutes,
                data_disk_gb=data_disk_gb,
            )
        except services.Refused as exc:
            assert exc.field in {"max_idle_time", "auto_terminate_minutes", "data_disk_gb"}, exc
            return
        group = MachineGroup.objects.get(pk=group.pk)
        for field, value in (
            ("max_idle_time", group.max_idle_time_minutes),
            ("auto_terminate_minutes", group.auto_terminate_minutes),
            ("data_disk_gb", group.data_disk_gb),
        ):
            assert inputs.NUMBERS[field].contains(value)

    each_in_a_rollback(run)


@EXAMPLES
@given(key=TEXTS, value=TEXTS, command=TEXTS)
def test_a_task_stores_its_texts_unchanged_or_refuses_them_by_name(alice, no_broker, key, value, command):
    group = MachineGroup.objects.filter(name="lab").first() or services.create_group(
        alice, machine_type="e2-micro", name="lab"
    )

    def run():
        try:
            task = services.create_task(
                alice,
                simulator="commands",
                parameters={"commands": [command]},
                machine_group=group,
                input_files=["run.sh"],
                metadata={key: value},
            )
        except services.Refused as exc:
            # "commands" is the simulator's own check of its parameter.
            assert exc.field and exc.field.split(".")[0] in {"metadata", "parameters", "commands"}, exc
            return
        assert not any(inputs.text_problem(text) for text in (key, value, command))
        stored = Task.objects.get(pk=task.pk)
        assert stored.metadata == {key: value} and stored.parameters["commands"] == [command.strip()]

    each_in_a_rollback(run)


@EXAMPLES
@given(limit=NUMBERS, idle=NUMBERS)
def test_housekeeping_and_the_groups_page_survive_any_stored_limit(alice, no_broker, limit, idle):
    def run():
        group = services.start_group(services.create_group(alice, machine_type="e2-micro", name="odd"))
        # Rows as an older version, or a hand in the database, may have left them.
        stored = {"auto_terminate_minutes": float(limit), "max_idle_time_minutes": float(idle)}
        if any(abs(v) > 1.7e308 and math.isfinite(v) for v in stored.values()):
            return  # beyond what PostgreSQL's double precision holds
        MachineGroup.objects.filter(pk=group.pk).update(**stored)
        group.refresh_from_db()
        housekeeping.enforce_group_limits()
        assert isinstance(time_left(group), str)

    each_in_a_rollback(run)

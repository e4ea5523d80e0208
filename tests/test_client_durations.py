"""Durations the client takes as people write them, checked before anything is sent."""

from __future__ import annotations

import datetime as dt

import pytest

from simdeck import durations
from simdeck.resources import ElasticMachineGroup, MachineGroup
from simdeck.simulators import _time_to_live


@pytest.fixture(autouse=True)
def no_server(monkeypatch, tmp_path):
    monkeypatch.setenv("SIMDECK_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SIMDECK_API_KEY", "sdk_x")
    monkeypatch.setenv("SIMDECK_CONFIG", str(tmp_path / "c.json"))


@pytest.mark.parametrize(
    ("written", "minutes"),
    [
        ("2 hours", 120),
        ("90 minutes", 90),
        ("1h30m", 90),
        ("1 hour, 30 minutes", 90),
        ("1.5h", 90),
        ("45s", 0.75),
        ("1d 2h", 1560),
        (dt.timedelta(hours=2), 120),
        (3, 3),
        ("3", 3),
        (None, None),
    ],
)
def test_durations_read_as_written(written, minutes):
    assert durations.minutes(written, "max_idle_time") == minutes


@pytest.mark.parametrize("written", ["soon", "2 fortnights", "", "1h30", "-5m", dt.timedelta(0), True, [1]])
def test_a_duration_that_cannot_be_read_says_how_to_write_one(written):
    with pytest.raises(ValueError, match="max_idle_time"):
        durations.minutes(written, "max_idle_time")


def test_machine_groups_take_timedeltas_text_and_a_moment_to_stop():
    group = MachineGroup(
        "n2-standard-2", max_idle_time=dt.timedelta(minutes=10), auto_terminate_minutes="2 hours"
    )
    body = group._request_body()
    assert (body["max_idle_time"], body["auto_terminate_minutes"]) == (10, 120)

    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    body = ElasticMachineGroup("n2-standard-2", max_machines=3, auto_terminate_ts=soon)._request_body()
    assert 59 < body["auto_terminate_minutes"] <= 60

    with pytest.raises(ValueError, match="has passed"):
        MachineGroup("n2-standard-2", auto_terminate_ts=dt.datetime(2020, 1, 1))
    with pytest.raises(ValueError, match="not both"):
        MachineGroup("n2-standard-2", auto_terminate_ts=soon, auto_terminate_minutes=30)
    with pytest.raises(ValueError, match="auto_terminate_minutes"):
        MachineGroup("n2-standard-2", auto_terminate_minutes="forever")


def test_a_time_to_live_goes_to_the_server_in_seconds():
    assert _time_to_live("2 hours") == "7200s"
    assert _time_to_live(dt.timedelta(minutes=1, seconds=0.5)) == "61s"
    assert _time_to_live(90) == "90s"  # a bare number is seconds, as before
    assert _time_to_live(None) is None
    with pytest.raises(ValueError, match="time_to_live"):
        _time_to_live("a while")

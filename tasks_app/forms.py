"""The console's forms: filters, metadata, resubmission, machine groups, API keys.

Forms only read and check what a person typed; the changes themselves go
through :mod:`tasks_app.services` (and :mod:`tasks_app.resubmit`), which
apply the same rules as the API. A :class:`services.Refused` from there is
put back on the form with :func:`add_refusal`, next to the field it names.
"""

from __future__ import annotations

import datetime as dt
import json

from django import forms
from django.conf import settings
from django.utils import timezone

from tasks_app import lifecycle, services
from tasks_app.lifecycle import Status
from tasks_app.models import Role, Task
from tasks_app.statuses import STATUS_GROUPS
from tasks_app.task_filter import TaskFilter

SORTS = {
    "-created": "Newest first",
    "created": "Oldest first",
    "status": "Status",
    "-status": "Status, reversed",
    "simulator": "Simulator",
    "-simulator": "Simulator, reversed",
}


def add_refusal(form: forms.Form, refusal: services.Refused) -> None:
    """Show a service's refusal on the field it concerns, or above the form.

    A field inside one (``parameters.commands.0``) is shown on the form's field holding it.
    """
    field = (refusal.field or "").split(".")[0]
    field = field if field in form.fields else None
    form.add_error(field, str(refusal))


class DateInput(forms.DateInput):
    input_type = "date"


class TaskFilterForm(forms.Form):
    """What the tasks table shows; every field lives in the URL's query string."""

    q = forms.CharField(required=False, label="Task id starts with", max_length=25)
    status = forms.CharField(required=False, label="Status")
    project = forms.CharField(required=False, label="Project", max_length=128)
    simulator = forms.CharField(required=False, label="Simulator", max_length=64)
    group = forms.CharField(required=False, label="Machine group", max_length=64)
    owner = forms.CharField(required=False, label="Owner", max_length=150)
    since = forms.DateField(required=False, label="Submitted from", widget=DateInput)
    until = forms.DateField(required=False, label="Submitted until", widget=DateInput)
    meta = forms.CharField(
        required=False, label="Metadata", max_length=500, help_text="key=value, e.g. case=dambreak"
    )
    col = forms.CharField(required=False, label="Metadata column", max_length=200)
    review = forms.ChoiceField(
        required=False, label="Review", choices=[("", "Any review"), *Task.Review.choices]
    )
    sort = forms.ChoiceField(required=False, choices=list(SORTS.items()), label="Sort")

    def clean_q(self) -> str:
        value = self.cleaned_data["q"].strip().lower()
        if value and not value.isalnum():
            raise forms.ValidationError("A task id has only letters and digits.")
        return value

    def clean_status(self) -> str:
        value = self.cleaned_data["status"].strip()
        if not value or value in STATUS_GROUPS:
            return value
        try:
            return lifecycle.parse_status(value).value
        except ValueError:
            raise forms.ValidationError(f"Unknown status {value!r}; pick one from the list.") from None

    def clean_meta(self) -> tuple[str, str] | None:
        value = self.cleaned_data["meta"].strip()
        if not value:
            return None
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise forms.ValidationError("Write the metadata filter as key=value.")
        return key.strip(), val.strip()

    def clean_sort(self) -> str:
        return self.cleaned_data["sort"] or "-created"

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            self.add_error("until", "The end of the date range is before its start.")
        return data

    def statuses(self) -> frozenset[Status] | None:
        """The statuses the filter keeps, or None for all."""
        value = self.cleaned_data.get("status")
        if not value:
            return None
        if value in STATUS_GROUPS:
            return STATUS_GROUPS[value][1]
        return frozenset({Status(value)})

    def task_filter(self) -> TaskFilter:
        """What a valid form keeps; its dates are whole days in the current time zone."""
        data = self.cleaned_data
        tz = timezone.get_current_timezone()
        since, until = data["since"], data["until"]
        return TaskFilter(
            statuses=self.statuses(),
            id_prefix=data["q"],
            project=data["project"],
            simulator=data["simulator"],
            machine_group=data["group"],
            owner=data["owner"],
            review=data.get("review") or "",
            metadata=(data["meta"],) if data["meta"] else (),
            created_from=since and dt.datetime.combine(since, dt.time.min, tz),
            created_before=until and dt.datetime.combine(until + dt.timedelta(days=1), dt.time.min, tz),
        )


class MetadataEntryForm(forms.Form):
    """One key and value; ``original`` is the key being edited (empty when adding)."""

    original = forms.CharField(required=False, widget=forms.HiddenInput)
    key = forms.CharField(max_length=200, label="Key", error_messages={"required": "A key cannot be blank."})
    value = forms.CharField(
        max_length=10_000,
        label="Value",
        strip=False,
        error_messages={"required": "A value cannot be blank; delete the key instead."},
    )

    def clean_key(self) -> str:
        key = self.cleaned_data["key"].strip()
        if not key:
            raise forms.ValidationError("A key cannot be blank.")
        return key

    def clean_value(self) -> str:
        value = self.cleaned_data["value"]
        if not value.strip():
            raise forms.ValidationError("A value cannot be blank; delete the key instead.")
        return value


def _json_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(f"This is not valid JSON: {exc.msg} (line {exc.lineno}).") from None
    if not isinstance(value, dict):
        raise forms.ValidationError(f'{what} must be a JSON object, like {{"name": "value"}}.')
    return value


class ResubmitForm(forms.Form):
    """A resubmission with edits: everything prefilled from the original."""

    parameters = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
        required=False,
        label="Parameters (JSON)",
    )
    machine_group = forms.ModelChoiceField(queryset=None, label="Machine group", empty_label=None)
    time_to_live = forms.CharField(
        required=False, label="Time to live", help_text="e.g. 90s, 10m, 1h30m; empty for none"
    )
    metadata = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        required=False,
        label="Metadata (JSON)",
    )

    def __init__(self, *args, groups, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["machine_group"].queryset = groups

    def clean_parameters(self) -> dict:
        return _json_object(self.cleaned_data["parameters"], "Parameters")

    def clean_metadata(self) -> dict:
        return _json_object(self.cleaned_data["metadata"], "Metadata")

    def clean_time_to_live(self) -> int | None:
        try:
            return services.parse_duration(self.cleaned_data["time_to_live"].strip())
        except services.Refused as exc:
            raise forms.ValidationError(str(exc)) from None


def machine_type_choices() -> list[tuple[str, str]]:
    return [
        (name, f"{name} — {spec['vcpus']} vCPU, {spec['memory_gb']} GB")
        for name, spec in sorted(settings.SIMDECK_MACHINE_TYPES.items())
    ]


class GroupForm(forms.Form):
    """A new machine group; :func:`services.create_group` makes the final checks."""

    name = forms.CharField(
        required=False,
        max_length=63,
        help_text="Lowercase letters, digits and dashes; empty for a generated name.",
    )
    project = forms.CharField(required=False, max_length=128, help_text="Empty for your default project.")
    machine_type = forms.ChoiceField(
        choices=machine_type_choices, initial=lambda: settings.SIMDECK_DEFAULT_MACHINE_TYPE
    )
    num_machines = forms.IntegerField(min_value=1, max_value=64, initial=1, label="Machines")
    elastic = forms.BooleanField(
        required=False, label="Elastic", help_text="Start machines while tasks wait, stop idle ones."
    )
    max_machines = forms.IntegerField(
        required=False, min_value=1, max_value=64, label="Most machines (elastic)"
    )
    spot = forms.BooleanField(required=False, label="Spot machines", help_text="Cheaper, may be reclaimed.")
    data_disk_gb = forms.IntegerField(min_value=1, max_value=65536, initial=10, label="Disk (GB)")
    auto_resize_disk_max_gb = forms.IntegerField(required=False, min_value=1, label="Grow disk up to (GB)")
    max_idle_time = forms.FloatField(
        required=False, initial=3, label="Stop when idle for (minutes)", help_text="Empty for never."
    )
    auto_terminate_minutes = forms.FloatField(
        required=False, label="Time to live (minutes)", help_text="Empty for no limit."
    )
    resubmit_on_preemption = forms.BooleanField(required=False, label="Requeue tasks whose machine is lost")
    provider = forms.ChoiceField(
        choices=[("local", "This server"), ("slurm", "Slurm cluster (a pilot job per machine)")],
        initial="local",
        label="Machines run on",
    )
    partition = forms.CharField(
        required=False, max_length=64, label="Slurm partition", help_text="Empty for the default."
    )
    account = forms.CharField(
        required=False, max_length=64, label="Slurm account", help_text="Empty for the default."
    )
    qos = forms.CharField(
        required=False, max_length=64, label="Slurm QOS", help_text="Empty for the default."
    )
    start = forms.BooleanField(required=False, initial=True, label="Start it now")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Where this server has only its own machines, there is nothing to choose.
        if "slurm" not in settings.SIMDECK_PROVIDERS:
            for name in ("provider", "partition", "account", "qos"):
                del self.fields[name]

    def service_arguments(self) -> dict:
        data = self.cleaned_data
        args = {
            "name": data["name"] or None,
            "project": data["project"] or None,
            "machine_type": data["machine_type"],
            "num_machines": data["num_machines"],
            "spot": data["spot"],
            "data_disk_gb": data["data_disk_gb"],
            "auto_resize_disk_max_gb": data["auto_resize_disk_max_gb"],
            "max_idle_time": data["max_idle_time"],
            "auto_terminate_minutes": data["auto_terminate_minutes"],
            "resubmit_on_preemption": data["resubmit_on_preemption"],
        }
        if data.get("provider") == "slurm":
            args["provider"] = "slurm"
            args["provider_options"] = {k: data[k] for k in ("partition", "account", "qos") if data[k]}
        if data["elastic"]:
            args["min_machines"] = data["num_machines"]
            args["max_machines"] = data["max_machines"] or max(data["num_machines"], 2)
        return args


class APIKeyForm(forms.Form):
    name = forms.CharField(max_length=100, label="Name", help_text="Where you use it, e.g. “laptop”.")


class JoinTokenForm(forms.Form):
    name = forms.CharField(max_length=100, label="Name", help_text="The host it is for, e.g. “lab-ws-3”.")


class BulkForm(forms.Form):
    """An action on the selected rows, or on every task the filter matches."""

    ACTIONS = {
        "kill": "Kill",
        "metadata": "Add metadata",
        "resubmit": "Resubmit",
        "export": "Export CSV",
    }
    action = forms.ChoiceField(choices=list(ACTIONS.items()))
    scope = forms.ChoiceField(
        choices=[("selected", "Selected rows"), ("filter", "Everything matching the filter")],
        initial="selected",
        widget=forms.RadioSelect,
    )
    filter = forms.CharField(required=False, widget=forms.HiddenInput)
    key = forms.CharField(required=False, max_length=200, label="Key")
    value = forms.CharField(required=False, max_length=10_000, label="Value")
    confirm = forms.BooleanField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The row checkboxes; which of them the user may touch is up to the view.
        raw = self.data.getlist("ids") if hasattr(self.data, "getlist") else []
        self.ids = [i for i in raw if i.isalnum() and len(i) <= 25][:1000]

    def clean(self):
        data = super().clean()
        if data.get("scope") == "selected" and not self.ids:
            self.add_error(None, "Select at least one row, or choose everything matching the filter.")
        if data.get("action") == "metadata":
            if not (data.get("key") or "").strip():
                self.add_error("key", "Give the key to add.")
            if not (data.get("value") or "").strip():
                self.add_error("value", "Give the value to add.")
        return data


class SavedViewForm(forms.Form):
    name = forms.CharField(max_length=100, label="Name")
    query = forms.CharField(required=False, max_length=2000, widget=forms.HiddenInput)
    share = forms.BooleanField(required=False, label="Share with the project")
    project = forms.CharField(required=False, max_length=128, label="Project")
    is_default = forms.BooleanField(required=False, label="Open the table with this view")

    def clean(self):
        data = super().clean()
        if data.get("share") and not data.get("project"):
            self.add_error("project", "Name the project to share the view with.")
        return data


class MemberForm(forms.Form):
    """Adding someone to a project; :func:`teams.add_member` checks the name."""

    username = forms.CharField(max_length=150, label="Username")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER, label="Role")


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices, label="Role")

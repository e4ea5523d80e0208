"""The admin site for staff: projects and their members (read only), quotas, API keys, group network,
machine prices.

Members are managed in the console or with ``manage.py members`` (see
tasks_app.teams), never here: those paths keep a maintainer in every
project and record each change of role in the audit trail.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.utils import timezone

from tasks_app.models import APIKey, MachineGroup, MachinePrice, Membership, Project, Quota


class MembershipInline(admin.TabularInline):
    model = Membership
    fields = ("user", "role", "added_by", "added_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "personal_owner", "created_by", "created_at")
    list_select_related = ("personal_owner", "created_by")
    search_fields = ("name",)
    readonly_fields = ("created_by", "created_at", "personal_owner")
    inlines = [MembershipInline]


class QuotaForm(forms.ModelForm):
    class Meta:
        model = Quota
        fields = ("user", "project", "max_machines", "max_group_ttl_minutes", "max_task_ttl_seconds")

    def clean(self) -> dict:
        data = super().clean()
        if bool(data.get("user")) == bool(data.get("project")):
            raise forms.ValidationError("A quota is for one user or for one project: choose one of the two.")
        return data


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    form = QuotaForm
    list_display = ("__str__", "max_machines", "max_group_ttl_minutes", "max_task_ttl_seconds")
    list_select_related = ("user", "project")
    autocomplete_fields = ("user", "project")
    search_fields = ("user__username", "project__name")


class MachinePriceForm(forms.ModelForm):
    # A choice of the catalog's types: a price for a type nobody can pick would never count.
    machine_type = forms.ChoiceField(choices=())

    class Meta:
        model = MachinePrice
        fields = ("machine_type", "price_per_hour")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["machine_type"].choices = [
            (name, name) for name in sorted(settings.SIMDECK_MACHINE_TYPES)
        ]
        self.fields["price_per_hour"].help_text = (
            f"In {settings.SIMDECK_CURRENCY}, for one machine of this type for one hour. "
            "Estimated costs everywhere use the price of the moment."
        )


@admin.register(MachinePrice)
class MachinePriceAdmin(admin.ModelAdmin):
    form = MachinePriceForm
    list_display = ("machine_type", "price_per_hour", "updated_at")
    ordering = ("machine_type",)


@admin.register(MachineGroup)
class MachineGroupAdmin(admin.ModelAdmin):
    """Groups are made and ended by their members; here staff decide only whether their simulations
    may reach the network (sandboxes have none by default)."""

    list_display = ("name", "project", "provider", "machine_type", "state", "allow_network")
    list_select_related = ("project",)
    list_filter = ("state", "allow_network", "provider")
    search_fields = ("name", "project__name")
    fields = ("name", "project", "owner", "provider", "machine_type", "state", "allow_network")
    readonly_fields = ("name", "project", "owner", "provider", "machine_type", "state")

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    """Keys can be seen and revoked, never made here: a key is shown once, to its owner."""

    list_display = ("name", "user", "hint", "created_at", "last_used_at", "revoked_at")
    list_select_related = ("user",)
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username", "hint")
    fields = ("user", "name", "hint", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request, queryset) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{count} key(s) revoked.", messages.SUCCESS)

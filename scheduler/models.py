"""Quotas: what one user, or each member of a group, may hold at once (issue 15, fair sharing)."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Quota(models.Model):
    """A cap on one user's concurrent work, or on each member's of a group (not the group's sum).
    A null limit is no limit. A user's effective cap is the tightest of their own and their groups'
    (``scheduler.quotas``); work beyond it waits pending, with the reason, until their work ends."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="quota")
    group = models.OneToOneField("auth.Group", null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="quota")
    cpu_millicores = models.PositiveBigIntegerField(null=True, blank=True)
    memory_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    gpu_count = models.PositiveIntegerField(null=True, blank=True)
    workload_count = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # Exactly one holder.
            models.CheckConstraint(condition=Q(user__isnull=False, group__isnull=True)
                                   | Q(user__isnull=True, group__isnull=False), name="quota_user_or_group"),
        ]

    def __str__(self) -> str:
        return f"quota of {self.holder}"

    @property
    def holder(self) -> str:
        return f"user {self.user.get_username()}" if self.user_id else f"group {self.group.name}"

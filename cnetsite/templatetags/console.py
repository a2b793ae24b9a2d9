"""Template helpers of the console: bars, status badges, amounts."""

import json

from django import template
from django.utils import timezone

from nodes.resources import human_bytes, human_cores

register = template.Library()


@register.inclusion_tag("admin/console/_bar.html")
def resource_bar(bar, compact=False):
    return {"bar": bar, "compact": compact}


@register.inclusion_tag("admin/console/_badge.html")
def status_badge(status, label=None):
    return {"status": status, "label": label or status}


register.filter("human_bytes", human_bytes)
register.filter("cores", human_cores)


@register.filter
def pretty_json(value):
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@register.filter
def ago(moment):
    """'4s ago', '3m ago', '2h ago', '5d ago': short enough for a table cell."""
    if not moment:
        return "never"
    seconds = max(0, int((timezone.now() - moment).total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"

"""Strict serializer fields: DRF's CharField quietly turns 5 into "5"; a command line must not."""

import re
from pathlib import PurePosixPath

from rest_framework import serializers


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StringListField(serializers.ListField):
    child = StrictCharField(allow_blank=True, trim_whitespace=False)
    default_error_messages = {"not_a_list": "Expected a list of strings but got type {input_type!r}."}


class StringMapField(serializers.DictField):
    child = StrictCharField(allow_blank=True, trim_whitespace=False)


VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what a POSIX shell exports
# What a shell sets itself (bash makes the ids read-only; dash refuses a bad OPTIND).
SHELL_OWN = frozenset({"PPID", "UID", "EUID", "OPTIND", "SHELLOPTS", "BASHOPTS"})


class EnvironmentField(StringMapField):
    """A process's environment: names a POSIX shell can pass on (the agent's launcher is one, and
    would drop any other name without a word)."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        for name in value:
            if not VARIABLE_NAME.fullmatch(name):
                raise serializers.ValidationError(
                    f"{name!r} is not a variable name: letters, digits and '_', not starting with a digit")
            if name in SHELL_OWN:
                raise serializers.ValidationError(f"{name!r} is a shell's own variable: it cannot be set")
        return value


class RelativePathField(StrictCharField):
    """A path that stays inside the folder it is resolved against: relative, no '..'."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or "\x00" in value:
            raise serializers.ValidationError("must be a relative path inside the work folder (no '/' start, no '..')")
        return value


class NoUnknownFieldsMixin:
    """Refuse keys the serializer does not know: a typo must not be silently dropped."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {key: ["unknown field; known: " + ", ".join(sorted(self.fields))] for key in unknown}
                )
        return super().to_internal_value(data)

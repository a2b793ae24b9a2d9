"""Resource amounts as requests give them: cpu in cores (fractions allowed), sizes in bytes."""

from rest_framework import serializers

from core.fields import StrictFloatField, StrictIntegerField

from ..resources import MILLICORES_PER_CORE

MAX_CORES = 100_000
MAX_BYTES = 2**60  # an exbibyte: anything larger is a typo, not a machine


class CoresField(StrictFloatField):
    """Cores in, millicores out: more than 0 and at most MAX_CORES, and at least one millicore.
    A default is given in millicores, as the value comes out."""

    def to_internal_value(self, data) -> int:
        cores = super().to_internal_value(data)
        if not 0 < cores <= MAX_CORES:
            raise serializers.ValidationError(f"must be more than 0 and at most {MAX_CORES} cores")
        millicores = round(cores * MILLICORES_PER_CORE)
        if millicores < 1:
            raise serializers.ValidationError("must be at least 0.001 cores (1 millicore)")
        return millicores


class BytesField(StrictIntegerField):
    """A whole number of bytes, at most MAX_BYTES; 0 allowed unless ``min_value`` says otherwise."""

    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", 0)
        super().__init__(max_value=MAX_BYTES, **kwargs)

"""Human sizes both ways: "512Mi", "2G", "1.5Gi" or plain bytes in; "512 MiB" out."""

import re

import click

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
    "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from "512Mi" (binary), "2G" (decimal, as Kubernetes reads it), "1.5GiB" or "1048576"."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 512Mi, 2G, 1048576)")
    number, unit = match.groups()
    return round(float(number) * _UNITS[(unit or "").lower()])


def human_bytes(amount) -> str:
    value = float(amount or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class Size(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)

"""Resource amounts in the units the database keeps, and their human forms."""

from dataclasses import asdict, dataclass

MILLICORES_PER_CORE = 1000


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: int = 0  # millicores
    gpu: int = 0  # devices
    memory: int = 0  # bytes
    storage: int = 0  # bytes

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def fits_in(self, free: "Resources") -> bool:
        return all(getattr(self, name) <= getattr(free, name) for name in NAMES)

    def shortfalls(self, free: "Resources") -> list[str]:
        """Why it does not fit, one phrase per short resource: "needs 2 GiB memory, 1.5 GiB free"."""
        return [
            f"needs {human(name, getattr(self, name))}{_UNNAMED.get(name, '')}, {human(name, getattr(free, name))} free"
            for name in NAMES
            if getattr(self, name) > getattr(free, name)
        ]

    def to_api(self) -> dict[str, float | int]:
        """The seed's units: cpu in cores, memory and storage in bytes, gpu as a count."""
        return {
            "cpu": self.cpu / MILLICORES_PER_CORE,
            "gpu": self.gpu,
            "memory": self.memory,
            "storage": self.storage,
        }


NAMES = ("cpu", "gpu", "memory", "storage")
# What a byte amount needs after it to say which resource it is ("2.0 GiB memory"); "2 CPU" says it.
_UNNAMED = {"memory": " memory", "storage": " storage"}


def human(name: str, amount: int) -> str:
    if name == "cpu":
        return f"{amount / MILLICORES_PER_CORE:g} CPU"
    if name == "gpu":
        return f"{amount} GPU"
    return human_bytes(amount)


def human_bytes(amount: float | None) -> str:
    """Binary units, one decimal: "1.5 GiB"; plain bytes as a whole number."""
    value = float(amount or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_cores(millicores: int | None) -> str:
    """Millicores as cores, as few digits as they need: 1500 → "1.5"."""
    return f"{(millicores or 0) / MILLICORES_PER_CORE:g}"

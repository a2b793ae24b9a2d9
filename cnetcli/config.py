"""Where the server and token come from: flags, then CNET_SERVER / CNET_TOKEN, then the file
``cnet login`` writes (mode 0600 under the user's config folder)."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8080"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "cnet" / "config.json"


@dataclass(frozen=True)
class Settings:
    server: str
    token: str | None


def load(*, server: str | None = None, token: str | None = None) -> Settings:
    stored = read_stored()
    return Settings(
        server=(server or os.environ.get("CNET_SERVER") or stored.get("server") or DEFAULT_SERVER).rstrip("/"),
        token=token or os.environ.get("CNET_TOKEN") or stored.get("token") or None,
    )


def read_stored() -> dict:
    try:
        return json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}


def store(*, server: str, token: str) -> Path:
    """Write the file readable by its owner only, from its first byte (never world-readable)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # a file that existed keeps its mode through O_CREAT
    with os.fdopen(descriptor, "w") as file:
        json.dump({"server": server.rstrip("/"), "token": token}, file)
    return path

"""Files that hold secrets (the embedded install's key, the admin's password): private from their
first byte and written whole, so no reader ever sees a part of one or a moment at a wider mode."""

import contextlib
import os
import tempfile
from pathlib import Path


def write_private_file(path: Path, text: str, *, keep_existing: bool = False) -> str:
    """Write ``text`` to ``path`` with mode 0600, atomically (a private temporary file in the same
    folder, then renamed or linked into place); returns what the file then holds.

    ``keep_existing``: a file already there (another process wrote it first) is left as it is and
    its content returned, so processes starting together agree on one value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if not keep_existing:
            os.replace(temporary, path)
            return text
        try:
            os.link(temporary, path)  # fails, rather than replaces, when the file exists
        except FileExistsError:
            return path.read_text().strip()
        return text
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)

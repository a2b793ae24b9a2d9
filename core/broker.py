"""The embedded broker: kombu's filesystem transport, with atomic files.

Kombu's own transport creates a file and then writes it: a ``.msg`` file can be claimed
by a polling consumer while still empty, and an exchange table (``*.exchange``) is
truncated before it is rewritten, so a publisher reading it meanwhile finds "" and
crashes on the JSON (both seen here under load). Here every file is written under a
hidden temporary name and renamed into place, which is atomic within one filesystem, so
readers see a whole file or none; table updates are serialized by a lock file.
"""

import fcntl
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.transport.virtual.base import Channel as VirtualChannel
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


def _write_atomically(path: Path, data: bytes) -> None:
    # A leading dot keeps the partial file out of every queue's and exchange's listing.
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    with open(partial, "wb", buffering=0) as file:
        file.write(data)
    os.replace(partial, path)


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        path = Path(self.data_folder_out) / name
        try:
            _write_atomically(path, str_to_bytes(dumps(payload)))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {str(path)!r} to directory") from exc

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda queues: queues if entry in queues else [entry, *queues])

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        VirtualChannel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda queues: [q for q in queues if q != entry])

    def _update_table(self, exchange, change: Callable[[list], list]) -> None:
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        try:
            with open(file.with_name(f".{file.name}.lock"), "a") as guard:
                fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
                queues = self.get_table(exchange)
                changed = change(list(queues))
                if changed != queues:
                    _write_atomically(file, str_to_bytes(dumps(changed)))
        except OSError as exc:
            raise ChannelError(f"Cannot update {file}") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    """Make ``filesystem://`` URLs use this transport in every process that loads Celery."""
    TRANSPORT_ALIASES["filesystem"] = "core.broker:Transport"

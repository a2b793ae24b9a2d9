"""The embedded broker: kombu's filesystem transport, with atomic message files.

Kombu's own ``_put`` creates the ``.msg`` file and then writes it, so a consumer polling
the folder can claim the file while it is still empty and crash on the JSON (seen here
under load). Writing to a hidden temporary name and renaming makes a message appear whole
or not at all; rename is atomic within one filesystem.
"""

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot keeps the partial file out of every queue's listing.
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb", buffering=0) as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    """Make ``filesystem://`` URLs use this transport in every process that loads Celery."""
    TRANSPORT_ALIASES["filesystem"] = "cnetsite.broker:Transport"

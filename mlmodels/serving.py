"""What a model server may listen on, and the per-run secret it answers to (issue 15, point 4).

- **Ports**: a model server's port lies in ``CNET_ML_SERVE_PORTS`` ("low-high"; by default
  9000-9999, which holds the seed's ``"port": 9000``) and is none of the control plane's (the
  seed's 8080, ``CNET_SERVER_URL``'s) or the broker's (``CELERY_BROKER_URL``'s). Checked where a
  port is submitted (``ServingPortField``); ``services.model_serve`` refuses one another active
  workload holds on the node it was placed on, and the agent refuses to start a server on a port
  something else has bound.
- **Secret**: each run of a server (a workload and the time it was scheduled) has a secret the
  control plane derives from its own key, so it is stored nowhere and a new run never answers
  to an old run's secret. The agent asks for it over the node API when it starts the server and
  hands it to that process alone (its environment); the control plane sends it with every
  request it forwards. A request without it gets 401.
"""

from urllib.parse import urlsplit

from django.conf import settings
from django.utils.crypto import salted_hmac
from rest_framework import serializers

from core.fields import StrictIntegerField

SEED_CONTROL_PLANE_PORT = 8080  # `make run` and the seed's agent config listen there
BROKER_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "sentinel": 26379, "amqp": 5672, "amqps": 5671,
                        "pyamqp": 5672}
SECRET_HEADER = "Authorization"  # "Bearer <secret>"


def serving_ports() -> range:
    """``CNET_ML_SERVE_PORTS`` as a range."""
    low, _, high = settings.CNET_ML_SERVE_PORTS.partition("-")
    return range(int(low), int(high or low) + 1)


def reserved_ports() -> dict[int, str]:
    """The ports no model server may take: {port: whose}."""
    reserved = {SEED_CONTROL_PLANE_PORT: "the control plane's"}
    server = urlsplit(settings.CNET_SERVER_URL)
    reserved[server.port or (443 if server.scheme == "https" else 80)] = "the control plane's"
    for url in settings.CELERY_BROKER_URL.split(";"):
        broker = urlsplit(url.strip())
        port = broker.port or BROKER_DEFAULT_PORTS.get(broker.scheme)
        if port:
            reserved[port] = "the broker's"
    return reserved


def serving_port_refusal(port: int) -> str | None:
    """Why ``port`` may not be a model server's; None when it may."""
    whose = reserved_ports().get(port)
    if whose:
        return f"port {port} is {whose}; a model server may not listen there"
    ports = serving_ports()
    if port not in ports:
        return f"must lie in {ports.start}-{ports.stop - 1} (CNET_ML_SERVE_PORTS)"
    return None


class ServingPortField(StrictIntegerField):
    """A model server's port, refused (naming the field) outside the serving range or on the
    control plane's or the broker's port."""

    def to_internal_value(self, data):
        port = super().to_internal_value(data)
        refusal = serving_port_refusal(port)
        if refusal:
            raise serializers.ValidationError(refusal)
        return port


def server_secret(*, workload_id, scheduled_at) -> str:
    """The secret of one run of a model server (``scheduled_at`` names the run)."""
    run = scheduled_at.isoformat() if hasattr(scheduled_at, "isoformat") else str(scheduled_at)
    return salted_hmac("cnet.mlmodels.server", f"{workload_id}:{run}", algorithm="sha256").hexdigest()


def secret_header(secret: str) -> dict[str, str]:
    return {SECRET_HEADER: f"Bearer {secret}"}

"""What a container may ask for on this cluster: one rule for the API (400) and the executor."""

from django.conf import settings


def privileged_allowed(privileged: bool) -> bool:
    return not privileged or settings.CNET_CONTAINERS_ALLOW_PRIVILEGED


def network_allowed(mode: str) -> bool:
    # "container:<id>" joins another container's network namespace: as much as host mode there.
    shares_host = mode == "host" or mode.startswith("container:")
    return not shares_host or settings.CNET_CONTAINERS_ALLOW_HOST_NETWORK


def mount_allowed(source: str) -> bool:
    """Named volumes always; a host path ("/…", "./…", "~…") only where the operator allows it."""
    return not source.startswith(("/", ".", "~")) or settings.CNET_CONTAINERS_ALLOW_HOST_MOUNTS

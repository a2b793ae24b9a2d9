"""What a container may ask for on this cluster: one rule for the API (400) and the executor.

- Volumes: named volumes only, from the operator's allowlist (``CNET_CONTAINER_VOLUMES``) or the
  submitter's own (named ``<username>-…``); host paths only where the operator allows them.
- Networks: only those in ``CNET_CONTAINER_NETWORKS`` (default ``bridge``, ``none``); ``host`` and
  ``container:<id>`` (another container's namespace) only with CNET_CONTAINERS_ALLOW_HOST_NETWORK.
- Capabilities: all dropped but ``CNET_CONTAINER_CAPABILITIES``, a short list most images need to
  start as root inside and step down (CHOWN, DAC_OVERRIDE, FOWNER, SETGID, SETUID,
  NET_BIND_SERVICE); no NET_RAW (forged packets), no SYS_* , no MKNOD, no KILL across users.
"""

from django.conf import settings


def privileged_allowed(privileged: bool) -> bool:
    return not privileged or settings.CNET_CONTAINERS_ALLOW_PRIVILEGED


def network_allowed(mode: str) -> bool:
    # "container:<id>" joins another container's network namespace: as much as host mode there.
    if mode == "host" or mode.startswith("container:"):
        return settings.CNET_CONTAINERS_ALLOW_HOST_NETWORK
    return mode in settings.CNET_CONTAINER_NETWORKS


def is_host_path(source: str) -> bool:
    return source.startswith(("/", ".", "~"))


def mount_allowed(source: str) -> bool:
    """A host path ("/…", "./…", "~…") only where the operator allows it."""
    return not is_host_path(source) or settings.CNET_CONTAINERS_ALLOW_HOST_MOUNTS


def volume_allowed(name: str, *, owner: str | None) -> bool:
    """A named volume: on the allowlist, or the owner's own (``<owner>-…``). Unknown owner (a row
    the agent was sent without one): the allowlist only."""
    return name in settings.CNET_CONTAINER_VOLUMES or bool(owner) and name.startswith(f"{owner}-")


def capabilities_kept() -> list[str]:
    return list(settings.CNET_CONTAINER_CAPABILITIES)

"""The node's container engine: one client per process, what the node reports of it, images.

The Docker SDK is imported inside each function: nodes without it can still run processes.
"""

import logging
import threading

from ..base import ExecutorError

logger = logging.getLogger(__name__)

ENGINE_TIMEOUT_SECONDS = 30
POOL_SIZE = 256

_client_lock = threading.Lock()
_client = None
_ncpu: int | None = None


def engine():
    """One Docker client per process (it pools its connections); ExecutorError if unreachable."""
    global _client
    with _client_lock:
        if _client is None:
            import docker

            try:
                # Each running container holds two streaming connections (its log followers).
                client = docker.from_env(timeout=ENGINE_TIMEOUT_SECONDS, max_pool_size=POOL_SIZE)
                client.ping()
            except Exception as error:  # the SDK raises DockerException, requests errors, OSError
                raise ExecutorError(f"no container engine reachable on this node: {error}") from error
            _client = client
        return _client


def detect_container_engine() -> dict:
    """The node's container capability, as the agent reports it at registration."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            version = client.version()
        finally:
            client.close()
    except Exception as error:
        return {"available": False, "reason": f"no container engine reachable: {error}"}
    return {
        "available": True,
        "engine": "docker",
        "version": version.get("Version"),
        "api_version": version.get("ApiVersion"),
    }


def engine_cpus(client) -> int:
    global _ncpu
    if _ncpu is None:
        _ncpu = int(client.info().get("NCPU") or 1)
    return _ncpu


def ensure_image(client, image: str, policy: str, node_id: str) -> None:
    """Apply the pull policy; a missing image that cannot be pulled fails naming the image."""
    import docker.errors

    if policy not in {"if-not-present", "always", "never"}:
        raise ExecutorError(f"unknown pull_policy {policy!r}")
    present = True
    if policy != "always":
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            present = False
        except docker.errors.APIError as error:
            raise ExecutorError(f"image {image!r}: {error.explanation}") from error
    if present and policy != "always":
        return
    if policy == "never":
        raise ExecutorError(f"image not found: {image!r} is not on node {node_id} and pull_policy is never")
    try:
        client.images.pull(image)
    except docker.errors.APIError as error:
        if policy == "always" and _has_image(client, image):
            raise ExecutorError(f"image {image!r} could not be pulled (pull_policy always): "
                                f"{error.explanation}") from error
        raise ExecutorError(f"image not found: {image!r} is not on node {node_id} and could not be pulled "
                            f"({error.explanation})") from error
    logger.info("pulled image %s on %s", image, node_id)


def _has_image(client, image: str) -> bool:
    import docker.errors

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def remove_container(client, ref: str) -> bool:
    """Remove a container and its anonymous volumes, running or not; False if there was none."""
    import docker.errors

    try:
        client.api.remove_container(ref, v=True, force=True)
    except docker.errors.NotFound:
        return False
    return True

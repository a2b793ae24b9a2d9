"""Node credentials on the API: ``Authorization: Node <key>``, for the node API only.

User endpoints do not list this class, so a node's key is refused there (401) exactly as an
unknown token is; node endpoints list it with ``IsNode`` and then act for ``request.auth``.
"""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from .models import Node
from .selectors import key_hash
from .services import CREDENTIAL_REFUSED, HOW_TO_JOIN, node_credential_authenticate

KEYWORD = b"node"


class NodeUser:
    """``request.user`` for a node's agent: authenticated, never staff, owning no user's work."""

    pk = id = None
    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, node: Node, *, credential_hash: str = "") -> None:
        self.node = node
        self.credential_hash = credential_hash  # key_hash of the credential it presented

    @property
    def username(self) -> str:
        return f"node:{self.node.node_id}"

    def get_username(self) -> str:
        return self.username

    def has_perm(self, perm, obj=None) -> bool:
        return False

    def has_perms(self, perms, obj=None) -> bool:
        return False

    def has_module_perms(self, app_label) -> bool:
        return False

    def __str__(self) -> str:
        return self.username


class NodeCredentialAuthentication(BaseAuthentication):
    """``Authorization: Node <key>``: the request acts for the node the key belongs to.

    A ``Node`` header with a key that is unknown or revoked is refused outright (401) rather than
    treated as anonymous, so an agent learns at once that it must join again.
    """

    cached = False  # see HeartbeatCredentialAuthentication

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != KEYWORD:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                f"Invalid Node header: send 'Node <key>'. To get a key, {HOW_TO_JOIN}."
            )
        try:
            key = parts[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Invalid Node header: the key contains invalid characters.") from None
        node = node_credential_authenticate(key=key, cached=self.cached)
        if node is None:
            raise exceptions.AuthenticationFailed(CREDENTIAL_REFUSED)
        return NodeUser(node, credential_hash=key_hash(key)), node

    def authenticate_header(self, request) -> str:
        return 'Node realm="cnet"'


class HeartbeatCredentialAuthentication(NodeCredentialAuthentication):
    """For the heartbeat alone: the credential's node is looked up once per process, not on every
    beat. ``request.auth`` is then that node as read at the lookup (its pk and node_id hold; its
    status may not), and the beat must be written with ``credential_hash``, which re-checks the
    credential in the same UPDATE: a revoked one beats no more from its revocation on."""

    cached = True


class IsNode(BasePermission):
    """Only a request authenticated by a node credential (``request.auth`` is its Node)."""

    message = f"This endpoint is for node agents: send 'Authorization: Node <key>'. To get a key, {HOW_TO_JOIN}."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, Node)

"""How the schema shows a node credential: ``Authorization: Node <key>``."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class NodeCredentialScheme(OpenApiAuthenticationExtension):
    target_class = "nodes.authentication.NodeCredentialAuthentication"
    name = "nodeCredential"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "Node <credential>, as POST /api/node/join answered it"}

"""Why a node cannot take a request now, in words: shared by single and batch placement."""

from nodes.models import NodeStatus
from nodes.resources import Resources

from ..strategies import NodeSnapshot


def shortfall(node: NodeSnapshot, requirements: Resources, capability: str | None) -> str:
    """Why the node cannot take the request now; empty when it can."""
    if node.status != NodeStatus.READY:
        return f"node is {node.status}"
    if capability and not node.capabilities.get(capability, {}).get("available"):
        return f"cannot run {capability} workloads"
    return "; ".join(requirements.shortfalls(node.free))


def why_not(node: NodeSnapshot, requirements: Resources, capability: str | None, fits_reason: str) -> dict:
    why = shortfall(node, requirements, capability)
    return {"node": node.node_id, "fits": not why, "reason": why or fits_reason}

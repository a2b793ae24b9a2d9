"""The agent running in this process, if any (set by ``manage.py runagent``)."""

_agent = None


def set_current_agent(agent) -> None:
    global _agent
    _agent = agent


def current_agent():
    if _agent is None:
        raise RuntimeError("no agent runs in this process; node queues are consumed by runagent only")
    return _agent

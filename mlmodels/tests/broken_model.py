"""Models standing in for a user's: one whose predict raises, one whose unpickling runs code.

No Django imports: the model server unpickles it by reference to this module."""


class Raises:
    n_features_in_ = 1

    def predict(self, rows):
        raise ValueError("negative inputs are not supported by this model")


def write_marker(path: str):
    """What unpickling a ``WritesMarker`` runs: it says where it ran (pid, uid, environment names)."""
    import json
    import os

    try:
        with open(f"/proc/{os.getppid()}/environ", "rb"):  # its parent: the agent that started it
            parent_environ = "readable"
    except OSError as error:
        parent_environ = type(error).__name__
    with open(path, "w") as marker:
        json.dump({"pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(), "environ": sorted(os.environ),
                   "parent_environ": parent_environ}, marker)
    return object()  # not a model: predicting with it fails


class WritesMarker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return write_marker, (self.path,)


class Doubles:
    """A one-feature model: twice its input."""

    n_features_in_ = 1

    def predict(self, rows):
        return rows[:, 0] * 2


def load_once_open(gate: str, loading: str):
    """What unpickling an ``OpensLate`` runs: a load that lasts until ``gate`` exists (a big
    artifact's), saying at ``loading`` that it began."""
    import os
    import time

    open(loading, "w").close()
    while not os.path.exists(gate):
        time.sleep(0.02)  # the model's own slow load, not the test's synchronisation: the test waits on `loading`
    return Doubles()


class OpensLate:
    def __init__(self, gate: str, loading: str):
        self.gate, self.loading = gate, loading

    def __reduce__(self):
        return load_once_open, (self.gate, self.loading)

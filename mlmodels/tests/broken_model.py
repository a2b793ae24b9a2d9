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

    with open(path, "w") as marker:
        json.dump({"pid": os.getpid(), "uid": os.getuid(), "environ": sorted(os.environ)}, marker)
    return object()  # not a model: predicting with it fails


class WritesMarker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return write_marker, (self.path,)

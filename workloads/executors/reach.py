"""Whether another uid can get to a path: every folder above it must let others through (o+x).

Imports nothing of Django's, so test settings may ask before the settings exist.
"""

import os


def others_may_run(path: str) -> bool:
    """Whether a uid other than the owner can reach (and so run or read) ``path``."""
    folder = os.path.dirname(os.path.realpath(path))
    while True:
        if not os.stat(folder).st_mode & 0o001:
            return False
        if folder == os.path.dirname(folder):
            return True
        folder = os.path.dirname(folder)

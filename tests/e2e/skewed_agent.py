"""``python tests/e2e/skewed_agent.py OFFSET runagent-args…``: an agent whose wall clock is OFFSET
seconds off (ahead if positive), as on a machine with a wrong clock. Its monotonic clock, which
the kernel keeps, is untouched."""

import os
import sys
import time
from pathlib import Path

import time_machine

if __name__ == "__main__":
    offset = float(sys.argv[1])
    time_machine.travel(time.time() + offset, tick=True).start()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cnetsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", "runagent", *sys.argv[2:]])

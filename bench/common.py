"""Helpers the benchmarks share."""

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def ensure_database(url: str) -> None:
    """Create the Postgres database a benchmark's DATABASE_URL names, if it is missing."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


# --- children a benchmark starts ------------------------------------------------------------
class Children:
    """Processes a benchmark starts, each the leader of its own process group, so ``stop()``
    ends them and whatever they forked (gunicorn's workers, celery's pool) however the bench ends."""

    def __init__(self, cwd, log_dir) -> None:
        self.cwd, self.log_dir = cwd, log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        from pathlib import Path

        log = open(Path(self.log_dir) / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def check(self) -> None:
        """Raise if a child has exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} (its log: {self.log_dir}/{name}.log)")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every child's process group, then SIGKILL what is left after ``grace`` seconds."""
        import signal
        import time

        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)  # stragglers in the group, even if the leader left
            proc.wait()
        self.procs.clear()


def _signal_group(pid: int, sig: int) -> None:
    import os

    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def recreate_database(url: str) -> None:
    """Drop and create the Postgres database a benchmark's DATABASE_URL names: its migrations are
    then those of the tree being measured, never a stale copy left by an earlier run."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def django_migrated(*, root: Path, database_url: str, broker_url: str, local_node_id: str, data_dir: Path) -> dict:
    """Point this process (and the children it will start) at a bench's database and broker, set
    Django up and migrate; the environment the children get."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "CNET_LOCAL_NODE_ID": local_node_id,
        "CNET_DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "cnetsite.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-not-secret"),  # a server database is not embedded
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        # A bench is one user submitting as fast as it can: the per-user rate limit would measure itself.
        "CNET_THROTTLE_SUBMISSIONS": os.environ.get("CNET_THROTTLE_SUBMISSIONS", "10000000/min"),
        "PYTHONPATH": str(root),
    }
    os.environ.update(env)
    sys.path.insert(0, str(root))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    return env

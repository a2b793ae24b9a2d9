"""``manage.py up``: the whole system on one machine, as ``make run`` starts it.

Migrates, makes sure an admin exists (printing its password and API token), then runs
the web server, the control worker, beat and a local agent as child processes, and
stops them all on Ctrl-C (the agent first: its shutdown still talks to the web). Embedded
defaults unless DATABASE_URL / CELERY_BROKER_URL say otherwise; embedded, it also leaves a join
token for other agents of this machine and data root (``cnetsite.standalone``) while it runs.
"""

import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from cnetsite.standalone import local_join_offer, local_join_withdraw
from core.files import write_private_file
from nodes.services import join_token_create
from workloads.executors.reach import others_may_run


class Command(BaseCommand):
    help = "Run the control plane, control worker, beat and a local agent together."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8080)
        parser.add_argument("--bind", default="127.0.0.1")
        parser.add_argument("--no-agent", action="store_true", help="control plane only")
        parser.add_argument("--agent-config", default=None, help="YAML config for the local agent")
        parser.add_argument("agent_args", nargs="*", metavar="-- FLAG", help="runagent flags for the local agent")

    def handle(self, *args, port, bind, no_agent, agent_config, agent_args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        username, password, token = ensure_admin()
        url = f"http://{bind if bind != '0.0.0.0' else '127.0.0.1'}:{port}"
        self.stdout.write(self.style.SUCCESS(f"\nCNET Agent is starting on {url}"))
        self.stdout.write(f"  Web UI:   {url}/admin/   user {username!r}, password {password!r}")
        self.stdout.write(f"  API docs: {url}/api/docs/")
        self.stdout.write(f"  API token: {token}")
        self.stdout.write(f'  Try:      curl -H "Authorization: Token {token}" {url}/api/nodes')
        self.stdout.write(f"  Or:       .venv/bin/cnet login --server {url} --token {token}")
        self.stdout.write("            .venv/bin/cnet nodes;  .venv/bin/cnet run --follow -- echo hello")
        if settings.CNET_EMBEDDED:
            self.stdout.write(f"  Join:     ./bin/cnet-agent here, with 127.0.0.1:{port} as parent or peer, "
                              "needs no token; from elsewhere: manage.py create_join_token")
        if isolation_off_for_this_python():
            self.stdout.write(f"  Isolation: off: workload uids could not run {sys.executable} (a folder above it is "
                              "closed to others), so workloads run as this user; install under /opt (deploy/) "
                              "to give each its own uid")
        self.stdout.write("")
        offered = local_join_offer(server=f"http://127.0.0.1:{port}") if settings.CNET_EMBEDDED else None
        try:
            dead = self.serve(port=port, bind=bind, no_agent=no_agent, agent_config=agent_config,
                              agent_args=agent_args)
        finally:
            if offered:
                local_join_withdraw(offered)
        if dead:
            raise CommandError(f"{', '.join(dead)} exited; stopped the rest")

    def serve(self, *, port, bind, no_agent, agent_config, agent_args) -> list[str]:
        python = sys.executable
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        children = {
            "web": [python, "-m", "gunicorn", "cnetsite.wsgi:application", "--bind", f"{bind}:{port}",
                    "--workers", os.environ.get("WEB_CONCURRENCY", "2"), "--threads", "4",
                    "--access-logfile", "-", "--graceful-timeout", "5", "--no-control-socket"],
            "control": [python, "-m", "celery", "-A", "cnetsite", "worker", "-Q", "control",
                        "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO",
                        "--hostname", "control@%h", "--without-mingle", "--without-gossip"],
            "beat": [python, "-m", "celery", "-A", "cnetsite", "beat", "--loglevel", "INFO",
                     "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME],
        }
        if not no_agent:
            # Like the seed's single node, the local agent advertises the address it is served on.
            where = ["--config", agent_config] if agent_config else ["--port", str(port)]
            # It joins over loopback like any node: a one-use token, spent only if it holds no
            # credential in the data folder yet (a later start reuses that one).
            join = ["--server", f"http://127.0.0.1:{port}", "--join-token", join_token_create(ttl_seconds=3600, uses=1)]
            children["agent"] = [python, manage, "runagent", *where, *agent_args, *join]
        return supervise(children, self.stdout)


def isolation_off_for_this_python() -> bool:
    """A root agent runs each workload as a uid of its own, and ML workloads run this interpreter. On a
    machine where it lives in a folder closed to others (a venv under a 0700 /root), every such
    workload would exit 126: the one-machine system then runs workloads as this user, says so in the
    banner, and its agent says so again at start. An explicit CNET_WORKLOAD_ISOLATION is obeyed."""
    if "CNET_WORKLOAD_ISOLATION" in os.environ or os.geteuid() != 0 or others_may_run(sys.executable):
        return False
    os.environ["CNET_WORKLOAD_ISOLATION"] = "0"  # for the children: the agent reads it at start
    return True


def ensure_admin() -> tuple[str, str, str]:
    """The admin user of an embedded install; its password lives in the data folder (0600)."""
    username = os.environ.get("CNET_ADMIN_USER", "admin")
    password_file = Path(settings.DATA_DIR) / "admin_password"
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    if user is None or not password_file.exists():
        password = os.environ.get("CNET_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        if user is None:
            user = user_model.objects.create_superuser(username=username, email="", password=password)
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
        write_private_file(password_file, password)
    token, _ = Token.objects.get_or_create(user=user)
    return username, password_file.read_text(), token.key


def supervise(commands: dict[str, list[str]], out) -> list[str]:
    """Run the children, prefix their output, stop them all when one dies or on a signal; returns
    the names of those that died by themselves."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    procs = {}
    for name, argv in commands.items():
        # From the project folder, whichever folder up was started in (bin/cnet-agent runs anywhere).
        procs[name] = subprocess.Popen(argv, cwd=settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, start_new_session=True)
        threading.Thread(target=_relay, args=(name, procs[name], out), daemon=True).start()
    dead = []
    while not dead and not stop.wait(0.5):
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
    if dead:
        out.write(f"{', '.join(dead)} exited; stopping the rest")
    for proc in reversed(procs.values()):  # last started first: the agent leaves while the web answers
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return dead


def _relay(name: str, proc: subprocess.Popen, out) -> None:
    for line in proc.stdout:
        out.write(f"{name:>7} | {line.rstrip()}")

"""Browser tests: Debian's chromium, driven by Playwright, against a live server and a real agent.

The live server is pytest-django's (in this process, on the test database); the agent is
``manage.py runagent`` in a subprocess on that same database and broker, so what the form
submits is really placed, dispatched, run and logged. Screenshots land in ``screenshots/``
(kept out of git). Without /usr/bin/chromium the tests skip, unless CNET_REQUIRE_BROWSER
is set (CI sets it after installing chromium), in which case they fail.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from django.conf import settings

from nodes.models import Node, NodeStatus
from tests.helpers import database_url, node_credential, wait_for

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
AGENT_NODE = "local"
AGENT_CPU = "2"
AGENT_MEMORY = str(4 * 1024**3)


def _missing_browser() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (.ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -r requirements.txt"
    return None


@pytest.fixture(autouse=True, scope="session")
def _static_root():
    # WhiteNoise warns when STATIC_ROOT is missing; the live server serves from the finders.
    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="module")
def browser():
    """One headless chromium per module (Playwright's loop runs only while this module's tests do)."""
    reason = _missing_browser()
    if reason:
        if os.environ.get("CNET_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; Django would take the test's
    # own (synchronous) ORM calls for calls from async code. Only for this module's tests.
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page, name: str) -> Path:
    """Save a full-page screenshot under screenshots/ and return its path."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _kill_workloads(data_dir: str) -> None:
    """Workload processes this test's agent started (they run in sessions of their own)."""
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("CNET_DATA_DIR") == data_dir and "CNET_WORKLOAD_ID" in env:
                proc.kill()
                found.append(proc)
        except psutil.Error:
            continue
    psutil.wait_procs(found, timeout=10)  # gone before the test database is flushed or dropped


@pytest.fixture
def agent(live_server, transactional_db, tmp_path):
    """A real agent for node ``local`` (2 cores, 4 GiB) on the test database and broker."""
    env = {
        **{key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"},
        "DJANGO_SETTINGS_MODULE": "cnetsite.settings_test",
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CNET_DATA_DIR": str(settings.DATA_DIR),
        # Workloads carry it so teardown finds exactly this run's processes.
        "CNET_WORKLOAD_ENV_PASSTHROUGH": "CNET_DATA_DIR",
        "CNET_HEARTBEAT_SECONDS": "1",
        "CNET_STOP_GRACE_SECONDS": "2",
    }
    # What its join left (in this test's folder: xdist workers share the data folder, not the database).
    node_credential(AGENT_NODE, Path(settings.DATA_DIR), path=tmp_path / "agent.credential")
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "runagent", "--node-id", AGENT_NODE,
             "--cpu", AGENT_CPU, "--memory", AGENT_MEMORY, "--server", live_server.url,
             "--credential-file", str(tmp_path / "agent.credential")],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: proc.poll() is not None or Node.objects.filter(
            node_id=AGENT_NODE, status=NodeStatus.READY, usage__has_key="cpu_percent").exists(),
            timeout=60, message="agent registered and reporting usage")
        assert proc.poll() is None, f"agent exited:\n{log_path.read_text(errors='replace')}"
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        _kill_workloads(str(settings.DATA_DIR))


@pytest.fixture
def login(live_server):
    """Log a page in through the console's login form."""

    def _login(page, username: str, password: str = "pw"):
        page.goto(live_server.url + "/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}/admin/")

    return _login

"""The dashboard in headless Chromium (Debian's `chromium`, driven by playwright): the page renders
the process table from its live feed, a spawned process appears, its stop button stops it (the
kernel says STOPPED), continue and kill work too. A screenshot is saved as an artifact in the
test's tmp dir. Skipped, saying so, only when no chromium binary is installed (.ci/run installs it)."""

from __future__ import annotations

import shutil
import time

import pytest

from gatewaykit import env, k, settle, url  # noqa: F401 (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium; .ci/run does this)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def wait_state(k, pid: int, state: str) -> None:
    for _ in range(400):
        if k.stat(pid)["state"] == state:
            return
        time.sleep(0.025)
    raise AssertionError(f"pid {pid} is {k.stat(pid)['state']}, not {state}")


def test_table_renders_and_stop_button_stops(url, k, browser, tmp_path):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("#status.live", timeout=15000)
    assert page.locator("#procs thead th").first.inner_text() == "pid"
    pid = k.spawn("a prompt held open for the dashboard", {"max_tokens": 8}, stdin=True, command="dash-test")
    wait_state(k, pid, "SLEEPING")
    row = page.locator(f'#procs tr[data-pid="{pid}"]')
    row.wait_for(timeout=15000)                                     # a spawned process appears
    assert "dash-test" in row.inner_text() and "SLEEPING" in row.locator("td.state").inner_text()
    page.wait_for_function("document.querySelectorAll('#kvmap rect').length > 0")
    row.locator('button[data-action="STOP"]').click()
    wait_state(k, pid, "STOPPED")                                   # the kernel stopped it
    page.wait_for_selector(f'#procs tr[data-pid="{pid}"].STOPPED', timeout=15000)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    print(f"dashboard screenshot: {shot}")
    page.locator(f'#procs tr[data-pid="{pid}"] button[data-action="CONT"]').click()
    wait_state(k, pid, "SLEEPING")
    page.locator(f'#procs tr[data-pid="{pid}"] button[data-action="KILL"]').wait_for(timeout=15000)
    page.locator(f'#procs tr[data-pid="{pid}"] button[data-action="KILL"]').click()
    wait_state(k, pid, "ZOMBIE")
    assert k.wait(pid)["reason"] == "signal"
    assert settle(k) == [] and errors == []
    page.close()

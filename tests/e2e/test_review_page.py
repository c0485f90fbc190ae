"""The review page (issue 27) in a real browser against real services: a person signs in with a tenant's API key,
answers the rounds of a protection job (more privacy, then flags an image with more privacy, then accepts), watches
the job run to the end and opens its report; and the page refuses what it must (a wrong key, another tenant's job,
a POST without its CSRF token), serves the previews uncached, shows a `<script>` label (a released attribute
value) and a `<script>` job name (in the URL) as text, shows the job's policy judged on each round,
sets its security headers, and axe-core finds no serious accessibility violation on the sign-in, job and report pages.

Debian's chromium (deploy/browser/chromium.sh, `make browser`) driven by Playwright through executable_path; axe-core
from node_modules (package.json). Screenshots of each step in out/review/. Services as their own processes
(e2e.jobkit), the coordinator with UMBRA_REVIEW_PORT."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.jobkit import SIZE, Stack, Tenant, stop, write_generator
from support import ADMIN_KEY, SERVICE_TOKEN, free_port
from umbra.client.datasets import DatasetsClient
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.dataset import synthetic
from umbra.dataset.images import SizePolicy
from umbra.storage.local import LocalObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "node_modules/axe-core/axe.min.js"
SHOTS = ROOT / "out/review"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FACES = 48  # the test split must hold the 3 preview faces (40 gives it 2)
XSS = "<script>window.__xss=1</script>"
LABEL = "<script>window.__xss=2</script>"  # the gender label "1" of the uploaded faces, as a tenant may write it
JOB = "review-e2e"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """A coordinator (with the review page) and an anonymizer; tenant acme with faces, a generator and a job
    awaiting its first round's answer; tenant globex with nothing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (deploy/browser/chromium.sh installs it as root)")
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make tools` (npm ci)")
    home = tmp_path_factory.mktemp("review")
    stack = Stack(home / "home")
    stack.home.mkdir()
    review_port = free_port()
    monkey = pytest.MonkeyPatch()
    try:
        with monkey.context() as env:  # the coordinator alone serves the page
            env.setenv("UMBRA_REVIEW_PORT", str(review_port))
            stack.start_coordinator()
        stack.start_anonymizer(0)
        acme = Tenant.create(stack.target, "acme")
        upload_with_a_script_label(acme, home / "faces")
        write_generator(LocalObjectStore(stack.objects), "umbra-acme")
        acme.create_job(JOB, preview_size=3, policy=js.ReleasePolicy(max_reidentification=1.0, max_epsilon=1e6))
        globex = Tenant.create(stack.target, "globex")
        yield stack, f"http://127.0.0.1:{review_port}", acme, globex, review_port
    finally:
        stack.close()


def upload_with_a_script_label(tenant: Tenant, folder: Path) -> None:
    """Synthetic faces whose gender label "1" reads LABEL: the page shows it as a released value, as text."""
    images = synthetic.write_folder(folder, FACES, size=SIZE, seed=4)
    with open(images / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    gender = rows[0].index("gender")
    for row in rows[1:]:
        row[gender] = LABEL if row[gender] == "1" else row[gender]
    with open(images / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    DatasetsClient(tenant.channel()).upload(images, "faces", progress=False, policy=SizePolicy(size=SIZE))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def axe_serious(browser, url: str, storage_state=None) -> list[dict]:
    """axe-core's serious and critical violations on `url` (in a context that lets the injected script run: the
    page's own CSP allows scripts from itself only)."""
    context = browser.new_context(bypass_csp=True, storage_state=storage_state)
    try:
        page = context.new_page()
        page.goto(url)
        page.add_script_tag(path=str(AXE))
        results = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
                 "nodes": [n["html"][:120] for n in v["nodes"][:3]]}
                for v in results["violations"] if v["impact"] in ("serious", "critical")]
    finally:
        context.close()


def sign_in(page, base: str, key: str):
    page.goto(f"{base}/signin")
    page.get_by_label("API key").fill(key)
    with page.expect_response(lambda r: r.url.endswith("/signin") and r.request.method == "POST") as answer:
        page.get_by_role("button", name="Sign in").click()
    return answer.value


def round_shown(page, number: int, timeout: float = 120) -> None:
    """Waits (the page reloads itself) until round `number` is on the page."""
    page.get_by_role("heading", name=f"Round {number}").wait_for(timeout=timeout * 1000)


def intensity(page) -> float:
    return float(page.locator("#round-intensity").inner_text())


def epsilon_spent(page) -> float:
    return float(page.locator("#epsilon-bar").get_attribute("value"))


def test_a_person_reviews_a_job_in_the_browser(system, browser):
    stack, base, acme, globex, _ = system
    began = time.monotonic()
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    csp_errors = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)

    # a wrong key is refused on the form; axe on the sign-in page
    page.goto(f"{base}/")
    assert page.url == f"{base}/signin"
    shot(page, "01-signin")
    refused = sign_in(page, base, "umbra_not_a_key_0123456789")
    assert refused.status == 401
    assert page.get_by_role("alert").inner_text().startswith("That API key was not accepted")
    shot(page, "02-wrong-key")
    assert not axe_serious(browser, f"{base}/signin"), axe_serious(browser, f"{base}/signin")

    # 1. sign in: the jobs
    assert sign_in(page, base, acme.key).status == 303
    assert page.url == f"{base}/"
    cookie = next(c for c in context.cookies() if c["name"] == "umbra_review")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and acme.key not in cookie["value"]
    page.get_by_role("link", name=JOB).wait_for()
    shot(page, "03-jobs")

    # 2. round 1: originals beside released images, risk, ε, the policy (none), the budget bar
    page.get_by_role("link", name=JOB).click()
    round_shown(page, 1)
    first, spent_1 = intensity(page), epsilon_spent(page)
    assert page.get_by_alt_text("Original face 1 of 3").is_visible()
    assert page.get_by_alt_text("Released face 3 of 3").is_visible()
    criteria = page.locator(".criteria li")  # the job's policy judged on this round
    assert criteria.count() == 2 and "Re-identification" in criteria.first.inner_text()
    assert "Privacy loss (ε)" in criteria.last.inner_text()
    assert "Re-identification rate" in page.locator(".risk").inner_text()
    values = page.locator(".attr-value").all_inner_texts()  # the tenant's labels, as text and never run
    assert LABEL in values and page.evaluate("window.__xss") is None
    assert spent_1 > 0
    shot(page, "04-round-1")
    response = page.request.get(f"{base}/jobs/{JOB}")
    headers = response.headers
    assert headers["content-security-policy"] == ("default-src 'self'; img-src 'self' data:; frame-src 'self'; "
                                                  "style-src 'self'; script-src 'self'")
    assert (headers["x-content-type-options"], headers["referrer-policy"], headers["x-frame-options"]) == (
        "nosniff", "no-referrer", "DENY")
    original = page.request.get(f"{base}/jobs/{JOB}/rounds/1/original/0")
    assert original.status == 200 and original.headers["cache-control"] == "no-store"
    assert original.body().startswith(b"\x89PNG")
    # a POST without the CSRF token is refused, and nothing is answered
    assert page.request.post(f"{base}/jobs/{JOB}/rounds/1/feedback", form={"answer": "more"}).status == 403
    assert page.request.post(f"{base}/jobs/{JOB}/rounds/1/feedback", form={"answer": "more", "csrf": "x"}
                             ).status == 403
    assert page.request.post(f"{base}/signout", form={}).status == 403
    violations = axe_serious(browser, f"{base}/jobs/{JOB}", context.storage_state())
    assert not violations, violations

    # 3-4. more privacy: round 2 at a higher intensity, more ε spent
    page.get_by_role("button", name="More privacy").click()
    round_shown(page, 2)
    assert intensity(page) > first and epsilon_spent(page) > spent_1
    shot(page, "05-round-2")

    # 5. flag a released image from the keyboard (it asks for more privacy), send it with More privacy
    flag = page.get_by_role("button", name="Released face 2 of 3")
    flag.focus()
    page.keyboard.press("Space")
    assert flag.get_attribute("aria-pressed") == "true"
    assert page.get_by_role("button", name="Accept").is_disabled()
    shot(page, "06-flagged")
    page.get_by_role("button", name="More privacy").click()
    round_shown(page, 3)
    flagged = page.locator("#rounds-table tbody tr[data-round='2'] td").last.inner_text()
    assert flagged == "1"
    assert page.locator("#rounds-chart").is_visible()
    shot(page, "07-round-3")

    # 6-7. accept; the stage and the progress bar follow the job to its end
    page.get_by_role("button", name="Accept").click()
    page.wait_for_load_state()
    state = page.locator("#job-state").inner_text()
    if state != "succeeded":
        assert page.locator("#job-progress").is_visible()
        shot(page, "08-running")
    page.locator("#job-state", has_text="succeeded").wait_for(timeout=300_000)
    shot(page, "09-succeeded")

    # 8. the report inline, its JSON and its PDF
    frame = page.frame_locator("#report-frame")
    frame.locator("body").wait_for()
    assert frame.locator("body").inner_text().strip()
    report = page.request.get(f"{base}/jobs/{JOB}/report")
    assert report.headers["x-frame-options"] == "SAMEORIGIN" and "sandbox" in report.headers[
        "content-security-policy"]
    data = json.loads(page.request.get(f"{base}/jobs/{JOB}/report.json").body())
    assert [r["intensity"] for r in data["rounds"]][:1] == [first]
    shot(page, "10-report")
    violations = axe_serious(browser, f"{base}/jobs/{JOB}", context.storage_state())
    assert not violations, violations
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the report (PDF)").click()
    assert Path(download.value.path()).read_bytes().startswith(b"%PDF"), "the report's PDF"

    # another tenant: acme's job is not found for globex's key
    other = browser.new_context()
    other_page = other.new_page()
    assert sign_in(other_page, base, globex.key).status == 303
    answer = other_page.goto(f"{base}/jobs/{JOB}")
    assert answer.status == 404 and "not found" in other_page.content().lower()
    shot(other_page, "11-other-tenant")
    other.close()

    # a job name in the URL holding <script> is shown as text
    answer = page.goto(f"{base}/jobs/%3Cscript%3Ewindow.__xss=1%3C%2Fscript%3E")
    assert answer.status in (400, 404) and page.evaluate("window.__xss") is None
    if answer.status == 400:  # the API's message names the job: as text
        assert XSS in page.get_by_role("alert").inner_text()
    shot(page, "12-script-in-url")

    # sign out: the cookie is gone, the pages ask to sign in again
    page.goto(f"{base}/")
    page.get_by_role("button", name="Sign out").click()
    assert page.url == f"{base}/signin"
    assert not [c for c in context.cookies() if c["name"] == "umbra_review"]
    assert page.goto(f"{base}/jobs/{JOB}").url == f"{base}/signin"
    assert not csp_errors, csp_errors
    context.close()
    print(f"review page walk-through: {time.monotonic() - began:.1f} s")


def test_a_taken_review_port_stops_the_coordinator_with_one_line(system, tmp_path):
    _, _, _, _, review_port = system  # the running coordinator holds it
    env = dict(__import__("os").environ, UMBRA_HOME=str(tmp_path), UMBRA_COORDINATOR_PORT=str(free_port()),
               UMBRA_SERVICE_TOKEN=SERVICE_TOKEN, UMBRA_ADMIN_KEY=ADMIN_KEY, UMBRA_REVIEW_PORT=str(review_port))
    proc = subprocess.Popen([sys.executable, "-m", "umbra.cli.main", "serve", "coordinator"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("umbra serve coordinator: the review page cannot listen on") and str(review_port) in last

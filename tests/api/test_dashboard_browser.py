"""The dashboard in a real headless Chromium against the real service.

`s4c serve`'s ServiceStack runs the API (gunicorn) and a real worker process on a tiny random
Llama with untrained S4C heads, on a fresh PostgreSQL database and the session's Redis.
Selenium drives Debian's chromium through Debian's chromedriver (apt-get, by .ci/run or this
test's setup; never downloaded by the test tool): sign in, submit two JSONL files from the
page, watch them complete, check that every plot holds bars with the job's numbers, cancel a
job, and save screenshots under artifacts/dashboard/. The worker's metrics are scraped too."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from jobs.settings import Settings
from s4c.embedded import find_free_port
from s4c.launcher import ServiceStack
from tests.s4c.support import LiveApi
from tests.worker.conftest import worker_db_url, worker_heads_dir, worker_model_dir  # noqa: F401

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# What the machine notes for this network: no background traffic, no first-run, no GPU.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1400",
)
WAIT_SECONDS = 120
APT_INSTALL = ("apt-get", "install", "-y", "-qq", "chromium", "chromium-driver")


def jsonl_file(path: Path, topic: str, max_tokens: list[int]) -> Path:
    lines = [
        {
            "custom_id": f"{topic}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "messages": [{"role": "user", "content": f"Tell me about {topic} number {i}."}],
                "max_tokens": n,
            },
        }
        for i, n in enumerate(max_tokens)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@dataclass(frozen=True)
class RunningService:
    stack: ServiceStack
    worker_metrics_port: int

    @property
    def url(self) -> str:
        return self.stack.settings.api_url


@pytest.fixture
def service(
    worker_db_url: str,  # noqa: F811
    redis_url: str,
    worker_model_dir: Path,  # noqa: F811
    worker_heads_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> Iterator[RunningService]:
    metrics_port = find_free_port()
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("S4C_")},
        "S4C_MODEL_NAME": f"tiny-{uuid.uuid4().hex[:8]}",  # its own queue on the shared Redis
        "S4C_MODEL_DIR": str(worker_model_dir),
        "S4C_HEADS": str(worker_heads_dir),
        "S4C_ENGINE_METHOD": "s4c",
        "S4C_CHUNK_SIZE": "4",
        "S4C_MAX_BATCH_SIZE": "4",
        "S4C_BASELINE_SAMPLE": "1.0",
        "S4C_SWEEP_INTERVAL_SECONDS": "2",
        "S4C_WORKER_METRICS_PORT": str(metrics_port),
        "PYTHONUNBUFFERED": "1",
    }
    environ |= {
        "S4C_HOME": str(tmp_path / "home"),
        "S4C_DATABASE_URL": worker_db_url,
        "S4C_BROKER_URL": redis_url,
    }
    settings = Settings.from_env(environ)
    stack = ServiceStack.start(settings, workers=1, device="cpu", environ=environ)
    try:
        yield RunningService(stack, metrics_port)
    finally:
        stack.stop()


def install_chromium() -> None:
    """Debian's chromium and chromedriver, installed with apt-get when missing (as .ci/run
    does); the test tool itself never downloads a browser."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        for command in (["apt-get", "update", "-qq"], [*APT_INSTALL]):
            subprocess.run(command, check=False, timeout=900, capture_output=True)
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{missing} missing: run `{' '.join(APT_INSTALL)}` as root"


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    install_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1280, 1400)
    yield driver
    driver.quit()


def shoot(driver: Any, name: str) -> None:
    """Save the whole page (not just the viewport) as artifacts/dashboard/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    (ARTIFACTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


def bars(driver: Any, chart: str) -> list[tuple[str, float]]:
    """(label, value) of each bar of one chart, read in one script call (no stale handles)."""
    found = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map("
        "b => [b.getAttribute('data-label'), Number(b.getAttribute('data-value'))])",
        f"svg[data-chart='{chart}'] rect.bar",
    )
    return [(str(label), float(value)) for label, value in found]


def test_sign_in_submit_watch_plots_and_cancel_in_chromium(
    service: RunningService, browser: Any, tmp_path: Path
) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url = service.url
    key = LiveApi(url, service.stack.settings).new_key("dashboard")
    # Rows are redrawn when a job changes: retry on a row replaced under our feet.
    wait = WebDriverWait(
        browser,
        WAIT_SECONDS,
        poll_frequency=0.25,
        ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
    )

    def row(job_id: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, f"tr[data-job-id='{job_id}']")

    def status_of(job_id: str) -> str:
        return str(row(job_id).get_attribute("data-status"))

    def click(job_id: str, selector: str | None = None) -> None:
        def clicked(_driver: Any) -> bool:
            target = row(job_id)
            (target.find_element(By.CSS_SELECTOR, selector) if selector else target).click()
            return True

        wait.until(clicked)

    def send(path: Path, metadata: dict[str, str], baseline_sample: str, window: str = "") -> str:
        """Fill the form, press Submit, return the new message once it replaced the old."""
        browser.find_element(By.ID, "submit-file").send_keys(str(path))
        for field_id, text in (
            ("submit-metadata", json.dumps(metadata)),
            ("submit-baseline", baseline_sample),
            ("submit-window", window),
        ):
            field = browser.find_element(By.ID, field_id)
            field.clear()
            field.send_keys(text)
        before = browser.find_element(By.ID, "submit-message").text
        browser.find_element(By.ID, "submit-button").click()
        wait.until(
            lambda _d: (
                (text := _d.find_element(By.ID, "submit-message").text) != before
                and not text.startswith("Uploading")
            )
        )
        return str(browser.find_element(By.ID, "submit-message").text)

    def submit(
        path: Path, metadata: dict[str, str], baseline_sample: str = "", window: str = ""
    ) -> str:
        message = send(path, metadata, baseline_sample, window)
        assert message.startswith("Submitted"), message
        return message.split()[1]

    # sign in: a wrong key is refused, the real one opens the page
    browser.get(url + "/")
    shoot(browser, "01-sign-in")
    browser.find_element(By.ID, "api-key").send_keys("s4c_not-a-key")
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "sign-in-error"), "unknown"))
    field = browser.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    wait.until(ready.visibility_of_element_located((By.ID, "submit-form")))
    assert browser.execute_script("return sessionStorage.getItem('s4c.apiKey')") == key

    # a broken file is refused with the API's problem details, line by line
    broken = tmp_path / "broken.jsonl"
    broken.write_text(jsonl_file(tmp_path / "ok.jsonl", "x", [4]).read_text() + "{not json\n")
    refused = send(broken, {"category": "broken"}, "")
    assert refused.startswith("Rejected (400)") and "line 2" in refused, refused
    shoot(browser, "02-rejected-file")

    # submit two files with different categories; watch them progress and complete
    qa = submit(jsonl_file(tmp_path / "qa.jsonl", "qa", [4, 6, 8, 10, 12, 14]), {"category": "qa"})
    shoot(browser, "03-submitted")
    chat = submit(
        jsonl_file(tmp_path / "chat.jsonl", "chat", [3, 5, 16, 20]),
        {"category": "chat"},
        window="1h",
    )
    seen_progress: set[str] = set()

    def both_completed(_driver: Any) -> bool:
        finished = []
        for job_id in (qa, chat):
            count = row(job_id).find_element(By.CSS_SELECTOR, ".progress .count").text
            done, total = (int(n) for n in count.split(" / "))
            if 0 < done < total and not any("partial" in s for s in seen_progress):
                seen_progress.add("partial")
                shoot(browser, "04-in-progress")
            seen_progress.add(count)
            finished.append(done == total)
        # The page redraws between reads: a status read after a stale count waits for the
        # next poll rather than ending the wait before the final count was seen.
        return all(finished) and status_of(qa) == "completed" and status_of(chat) == "completed"

    wait.until(both_completed)
    assert "6 / 6" in seen_progress and "4 / 4" in seen_progress

    # the newest job is shown; select the first one and read its plots
    click(qa)
    wait.until(ready.text_to_be_present_in_element((By.ID, "detail-id"), qa))
    job = requests.get(
        f"{url}/v1/jobs/{qa}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).json()
    stats = job["stats"]
    wait.until(lambda _d: len(bars(browser, "tokens")) > 0)
    throughput = dict(bars(browser, "throughput"))
    assert throughput["s4c (whole job)"] == pytest.approx(stats["tokens_per_second"])
    assert throughput["ar baseline (sample)"] == pytest.approx(
        stats["baseline"]["tokens_per_second"]
    )
    acceptance = [value for _label, value in bars(browser, "acceptance")]
    assert acceptance == pytest.approx(stats["acceptance_per_depth"])
    assert acceptance  # the tree the engine chose drafts at least one level
    histogram = bars(browser, "tokens")
    assert sum(count for _label, count in histogram) == 6
    groups = dict(bars(browser, "groups"))
    assert set(groups) == {"chat (1)", "qa (1)"}
    assert groups["qa (1)"] == pytest.approx(stats["baseline"]["speedup"])
    caption = browser.find_element(By.ID, "throughput-caption").text
    assert "measured speedup" in caption
    shoot(browser, "05-completed-with-plots")

    # the job sent with a completion window shows it, and that it finished in time
    click(chat)
    wait.until(ready.text_to_be_present_in_element((By.ID, "detail-id"), chat))
    window_card = wait.until(
        lambda _d: next(
            (
                card
                for card in _d.find_elements(By.CSS_SELECTOR, "#detail-cards .card")
                if card.find_element(By.CSS_SELECTOR, ".name").text == "Completion window"
            ),
            None,  # not drawn yet: wait for the next redraw
        )
    )
    assert window_card.find_element(By.CSS_SELECTOR, ".val").text == "1h"
    assert window_card.find_element(By.CSS_SELECTOR, ".note").text == "finished in time"
    chat_view = requests.get(
        f"{url}/v1/jobs/{chat}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).json()
    assert chat_view["completion_window"] == "1h"
    assert chat_view["expires_at"] == chat_view["created_at"] + 3600

    # cancel a big job (no baseline re-runs) from the page once its first chunk is in; big
    # enough (100 chunks) that a quiet machine cannot finish it before the click lands
    lines = jsonl_file(tmp_path / "big.jsonl", "big", [24] * 400)
    big = submit(lines, {"category": "big"}, baseline_sample="0")
    wait.until(
        lambda _d: (
            int(row(big).find_element(By.CSS_SELECTOR, ".progress").get_attribute("data-finished"))
            >= 4
        )
    )
    click(big, "button[data-action='cancel']")
    wait.until(lambda _d: status_of(big) == "cancelled")
    counts = requests.get(
        f"{url}/v1/jobs/{big}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).json()["request_counts"]
    assert counts["completed"] >= 4 and counts["cancelled"] > 0
    shoot(browser, "06-cancelled")

    # the worker's Prometheus endpoint counted the chunks it generated
    metrics_url = f"http://127.0.0.1:{service.worker_metrics_port}/metrics"
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    chunks = sum(
        s.value for s in families["s4c_worker_chunks"].samples if s.name.endswith("_total")
    )
    assert chunks >= 3  # qa: 2 chunks of 4, chat: 1 chunk
    assert families["s4c_worker_tau"].samples[0].value >= 1.0

"""The Airflow UI as an operator uses it: log in, find the ingest DAG, trigger it through the dialog."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from devstack.airflow import ADMIN_PASSWORD, ADMIN_USER, Airflow
from devstack.airflow_api import AirflowApiError, AirflowClient
from devstack.runtime import REPO_ROOT, subdir

from .airflow_support import ARCHIVE_DAG, INGEST_DAG, start_airflow
from .test_dag_integrity import pictured_shapes

pytestmark = pytest.mark.airflow

RESTORE_DRILL = "eventpipe_restore_drill"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def airflow() -> Airflow:
    return start_airflow()


@pytest.fixture()
def api(airflow: Airflow) -> Iterator[AirflowClient]:
    with AirflowClient(airflow.url) as client:
        client.wait_for_dag(INGEST_DAG)
        yield client


@pytest.fixture()
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless Debian Chromium with its matching chromedriver, given by path: Selenium Manager never runs.

    SE_OFFLINE also keeps Selenium Manager off the network should a future Selenium consult it anyway.
    """
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium/chromedriver missing: run `make browser` (Debian packages chromium, chromium-driver)")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def evidence_on_failure(browser: WebDriver, name: str) -> Iterator[None]:
    """Screenshot and page source in .devstack/artifacts/ when the block fails."""
    try:
        yield
    except BaseException:
        shot = subdir("artifacts") / f"{name}.png"
        browser.save_screenshot(str(shot))
        shot.with_suffix(".html").write_text(browser.page_source)
        print(f"screenshot of the failure: {shot}")
        raise


RETRY_ON = (
    StaleElementReferenceException,
    NoSuchElementException,
    ElementClickInterceptedException,
    ElementNotInteractableException,
)


def _ui(browser: WebDriver) -> WebDriverWait:
    """Waits that re-find elements: the React UI re-renders while data loads."""
    return WebDriverWait(browser, 60, poll_frequency=0.5, ignored_exceptions=RETRY_ON)


def _click(browser: WebDriver, by: str, value: str) -> None:
    _ui(browser).until(lambda d: d.find_element(by, value).click() or True)


def _type(browser: WebDriver, by: str, value: str, text: str) -> None:
    """Select-all + type (React-controlled fields ignore WebElement.clear()), until the field holds ``text``."""

    def attempt(driver: WebDriver) -> bool:
        element = driver.find_element(by, value)
        element.click()
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(Keys.DELETE)
        element.send_keys(text)
        return driver.find_element(by, value).get_attribute("value") == text

    _ui(browser).until(attempt)


def test_login_find_dag_and_trigger_through_the_dialog(
    airflow: Airflow, api: AirflowClient, browser: WebDriver, request: pytest.FixtureRequest
) -> None:
    with evidence_on_failure(browser, request.node.name):
        _trigger_through_the_ui(airflow, api, browser)


def _trigger_through_the_ui(airflow: Airflow, api: AirflowClient, browser: WebDriver) -> None:
    run_id = f"ui_test__{uuid.uuid4().hex[:12]}"
    topic = f"ui-test-{run_id[-12:]}"
    before = {r.dag_run_id for r in api.dag_runs(INGEST_DAG)}

    browser.get(f"{airflow.url}/")
    _type(browser, By.NAME, "username", ADMIN_USER)
    _type(browser, By.NAME, "password", ADMIN_PASSWORD)
    _click(browser, By.CSS_SELECTOR, "button[type=submit]")
    _ui(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "a[href='/dags']")))

    browser.get(f"{airflow.url}/dags")
    _click(browser, By.CSS_SELECTOR, f"a[href$='/dags/{INGEST_DAG}']")
    _ui(browser).until(ec.url_contains(f"/dags/{INGEST_DAG}"))
    _click(browser, By.CSS_SELECTOR, "[data-testid=trigger-dag-button]")

    _type(browser, By.ID, "element_topics", topic)
    _click(browser, By.ID, "switch:element_dry_run")
    _ui(browser).until(lambda d: d.find_element(By.NAME, "element_dry_run").is_selected())
    # "Unpause ... on trigger" is shown only while the DAG is paused: keep it paused, the run just has to exist
    for unpause in browser.find_elements(By.XPATH, "//label[contains(., 'Unpause') and contains(., 'on trigger')]"):
        if unpause.find_element(By.TAG_NAME, "input").is_selected():
            unpause.click()
    _click(browser, By.XPATH, "//button[contains(@id, 'trigger:advancedOptions')]")
    _type(browser, By.NAME, "dagRunId", run_id)
    _click(browser, By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")

    try:
        WebDriverWait(browser, 30, ignored_exceptions=(AirflowApiError,)).until(
            lambda _: api.dag_run(INGEST_DAG, run_id)
        )
        run = api.dag_run(INGEST_DAG, run_id)
        assert run.dag_run_id not in before
        assert run.run_type == "manual"
        assert run.conf == {"topics": [topic], "dry_run": True}
    finally:
        with suppress(AirflowApiError):  # a queued UI run must not hold the DAG's single active-run slot
            api.set_run_state(INGEST_DAG, run_id, "failed")  # not deleted: the scheduler may hold it


SCREENSHOTS = {
    "dag-list": ("/dags", INGEST_DAG),
    "ingest-dag": (f"/dags/{INGEST_DAG}", INGEST_DAG),
    "archive-dag": (f"/dags/{ARCHIVE_DAG}", ARCHIVE_DAG),
    "restore-drill": (f"/dags/{RESTORE_DRILL}", RESTORE_DRILL),
}
DOCS_IMG = REPO_ROOT / "docs" / "img"


def _not_a_clean_demo(api: AirflowClient) -> list[str]:
    """Why this Airflow's pages are not the ones to show people (empty: a clean `make demo`, untouched by tests)."""
    problems = [
        f"{dag_id}: {len(failed)} failed runs"
        for dag_id in (INGEST_DAG, ARCHIVE_DAG, RESTORE_DRILL, "eventpipe_train_anomaly_model")
        if (failed := api.dag_runs(dag_id, state="failed"))
    ]
    for dag_id in (INGEST_DAG, ARCHIVE_DAG, RESTORE_DRILL):
        green = api.dag_runs(dag_id, state="success")
        if not green:
            problems.append(f"{dag_id}: no successful run")
        elif {"setup"} - {t["task_id"] for t in api.task_instances(dag_id, green[0].dag_run_id)}:
            problems.append(f"{dag_id}: its latest green run has no setup task")
    return problems


def test_screenshots_for_people(airflow: Airflow, api: AirflowClient, browser: WebDriver) -> None:
    """The DAG list, a green ingest run with setup, the archive DAG and the restore drill, in .devstack/artifacts/ui/.

    With EVENTPIPE_SCREENSHOTS=docs they also replace docs/img/ (the README's pictures), with the pictured DAGs'
    shapes in docs/img/dag-shapes.json, which tests/test_dag_integrity.py compares with the DAGs: only from a
    clean `make demo` that no test run has touched, so the first picture a newcomer sees has no red in it.
    """
    to_docs = os.environ.get("EVENTPIPE_SCREENSHOTS") == "docs"
    if to_docs and (problems := _not_a_clean_demo(api)):
        pytest.fail(f"docs/img pictures a clean `make demo`; this Airflow is not one: {problems}")
    folder = subdir("artifacts", "ui")
    browser.get(f"{airflow.url}/")
    _type(browser, By.NAME, "username", ADMIN_USER)
    _type(browser, By.NAME, "password", ADMIN_PASSWORD)
    _click(browser, By.CSS_SELECTOR, "button[type=submit]")
    _ui(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "a[href='/dags']")))
    for name, (path, expected) in SCREENSHOTS.items():
        browser.get(f"{airflow.url}{path}")
        _ui(browser).until(lambda d, text=expected: text in d.find_element(By.TAG_NAME, "body").text)
        time.sleep(2)  # let charts and the grid finish rendering
        shot = folder / f"{name}.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000, f"{shot} looks empty"
        if to_docs:
            shutil.copyfile(shot, DOCS_IMG / shot.name)
    if to_docs:
        (DOCS_IMG / "dag-shapes.json").write_text(json.dumps(pictured_shapes(), indent=2) + "\n")

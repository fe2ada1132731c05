"""`agentflow ui` in a real browser: Debian's chromium, driven by selenium through
/usr/bin/chromedriver (nothing downloads). Each test saves a screenshot under
tests/artifacts/ (git-ignored). They skip, saying why, only where chromium is not installed
(`apt-get install chromium chromium-driver`; .ci/run installs them)."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from runtime_support import af, approval, ok, outputs, stop, wait_for_answer, write
from ui_support import FAN_OUT_TEXT, finished_run, start_held_run, ui_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,900")

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason=f"no browser: {CHROMIUM} and {CHROMEDRIVER} come from Debian's chromium and chromium-driver packages")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="agentflow-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def wait_for(driver, condition, what: str, timeout: float = 20):
    """The first truthy `condition(driver)`. The page redraws as it polls, so an element found
    a moment ago may be gone: the condition is then tried again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        condition, message=f"waiting for {what}")


def css(selector: str):
    from selenium.webdriver.common.by import By
    return By.CSS_SELECTOR, selector


def box(driver, node_id: str):
    """The graph box of a node (its `<g class="node" id="n:ID">`)."""
    return wait_for(driver, lambda d: d.execute_script(
        "return document.getElementById(arguments[0])", f"n:{node_id}"), f"the box of {node_id}")


def click_box(driver, node_id: str) -> None:
    """Finds the box and clicks it in one script: the page may redraw its graph between two
    calls (a run's status changed), which leaves a box found by an earlier call stale."""
    wait_for(driver, lambda d: d.execute_script(
        "const box = document.getElementById(arguments[0]);"
        "if (box === null) return false;"
        "box.dispatchEvent(new MouseEvent('click', {bubbles: true}));"
        "return true;",
        f"n:{node_id}"), f"the box of {node_id} to click")


def test_the_list_shows_the_runs_and_opens_one(tmp_path, browser):
    run_id = finished_run(tmp_path)
    with ui_server(tmp_path) as url:
        browser.get(url + "/")
        row = wait_for(browser, lambda d: d.find_elements(*css(f'tr[data-run="{run_id}"]')), "the run's row")[0]
        assert "succeeded" in row.text and "flow" in row.text and "8 (8 succeeded)" in row.text
        screenshot(browser, "ui-runs-list")
        row.find_element(*css("a")).click()
        wait_for(browser, lambda d: d.current_url.endswith(f"/runs/{run_id}"), "the run page")
        assert box(browser, FAN_OUT_TEXT) and box(browser, "main/drafts")
        header = wait_for(browser, lambda d: d.find_element(*css("#run-status")).text, "the run's status")
        assert header == "succeeded"
        screenshot(browser, "ui-run-page")


def test_clicking_a_node_shows_its_messages_and_a_fan_out_expands(tmp_path, browser):
    run_id = finished_run(tmp_path)
    with ui_server(tmp_path) as url:
        browser.get(f"{url}/runs/{run_id}")
        click_box(browser, FAN_OUT_TEXT)
        wait_for(browser, lambda d: "3 instance(s)" in d.find_element(*css("#details")).text, "the fan-out's items")
        browser.find_element(*css("#expand")).click()
        click_box(browser, "main/drafts[1]/text")  # drawn once expanded
        details = wait_for(browser, lambda d: d.find_elements(*css("#details .message.assistant")), "its messages")
        text = browser.find_element(*css("#details")).text
        assert "main/drafts[1]/text" in text and "ran: never run" in text and "Write one line about tides." in text
        assert details[0].text.startswith("assistant")
        assert browser.find_elements(*css("#graph g.node.selected"))
        screenshot(browser, "ui-node-details")
        click_box(browser, "main/return@1")  # the title call, which used the `shout` tool
        wait_for(browser, lambda d: d.find_elements(*css("#details .message.tool")), "the tool's result")
        messages = [m.text for m in browser.find_elements(*css("#details .message"))]
        assert len(messages) == 3 and "calls shout" in messages[0] and "three drafts" in messages[0]
        assert messages[1].startswith("tool") and "THREE DRAFTS!" in messages[1]
        screenshot(browser, "ui-tool-call")


BIG_FAN_OUT = """
tool check(i: int) -> int {
  python = "checks:check"
}

choreography main(items: list[int]) -> list[int] {
  results = for i in items {
    yield check(i)
  }
  return results
}
"""


def test_a_big_fan_out_is_counted_by_status_and_lists_its_failures_first(tmp_path, browser):
    """450 instances, the last of them failed: the details count them by status and list
    200, the failed one first; the page does not build a list of every instance (at 100k
    that took it ~10 s, at every redraw)."""
    write(tmp_path / "flow.agentflow", BIG_FAN_OUT)
    write(tmp_path / "checks.py", "def check(i):\n    if i == 449:\n        raise ValueError('no 449')\n    return i\n")
    done = af(tmp_path, "run", "flow.agentflow", "--input", f"items={list(range(450))}")
    assert done.returncode == 3, done.stderr
    run_id = json.loads(af(tmp_path, "runs", "--json").stdout)[0]["run_id"]
    fan_out, failed = "main/results[*]/yield@1", "main/results[449]/yield@1"
    with ui_server(tmp_path) as url:
        browser.get(f"{url}/runs/{run_id}")
        click_box(browser, fan_out)
        details = wait_for(browser, lambda d: "450 instance(s)" in d.find_element(*css("#details")).text
                           and d.find_element(*css("#details")), "the fan-out's details")
        assert "(1 failed, 449 succeeded)" in details.text
        listed = [li.text for li in browser.find_elements(*css("ul.instances li"))]
        assert len(listed) == 200
        assert listed[0] == f"{failed} failed" and listed[1] == "main/results[0]/yield@1 succeeded"
        assert f"250 more not listed: agentflow show {run_id} lists every instance." in details.text
        screenshot(browser, "ui-big-fan-out")
        browser.find_element(*css("ul.instances li a")).click()
        wait_for(browser, lambda d: "no 449" in d.find_element(*css("#details")).text, "the failed instance's error")


def test_a_live_run_updates_on_the_page(tmp_path, browser):
    proc, run_id = start_held_run(tmp_path)
    try:
        with ui_server(tmp_path) as url:
            browser.get(f"{url}/runs/{run_id}")
            wait_for(browser, lambda d: d.find_element(*css("#run-status")).text == "running", "running")
            assert box(browser, "main/drafts[*]/held")
            assert "3 running" in browser.find_element(*css("#graph")).text
            screenshot(browser, "ui-live-running")
            (tmp_path / "go").touch()
            wait_for(browser, lambda d: d.find_element(*css("#run-status")).text == "succeeded", "the run to finish")
            wait_for(browser, lambda d: "3 succeeded" in d.find_element(*css("#graph")).text, "the graph to redraw")
            screenshot(browser, "ui-live-done")
            assert proc.wait(30) == 0, outputs(proc)
    finally:
        stop(proc)


def test_a_person_answers_a_waiting_node_on_the_page_and_the_run_goes_on(tmp_path, browser):
    from selenium.webdriver.support.ui import Select

    approval(tmp_path)
    run_id = wait_for_answer(tmp_path)
    with ui_server(tmp_path) as url:
        browser.get(f"{url}/runs/{run_id}")
        wait_for(browser, lambda d: d.find_element(*css("#run-status")).text == "waiting", "the run waiting")
        click_box(browser, "main/decision")
        form = wait_for(browser, lambda d: d.find_elements(*css("#answer-form")), "the answer form")[0]
        assert "Publish this announcement" in form.text and 'of type "approve" | "revise"' in form.text
        choice = Select(browser.find_element(*css("#answer-value")))
        assert [o.text for o in choice.options] == ["approve", "revise"]
        screenshot(browser, "ui-answer-form")

        # A value the select does not offer (as a hand-edited page could send) comes back refused.
        browser.execute_script("arguments[0].add(new Option('maybe', 'maybe'))", choice._el)
        choice.select_by_value("maybe")
        browser.find_element(*css("#answer-submit")).click()
        said = wait_for(browser, lambda d: d.find_element(*css("#answer-said.error")).text, "the reason it is refused")
        assert said.startswith('the answer does not fit "approve" | "revise": ')
        screenshot(browser, "ui-answer-refused")

        choice.select_by_value("approve")
        browser.find_element(*css("#answer-by")).send_keys("alice")
        browser.find_element(*css("#answer-submit")).click()
        notice = wait_for(browser, lambda d: d.find_element(*css("#notice")).text, "the answer taken")
        assert notice == f"answered main/decision of run {run_id}; continue with `agentflow run FILE --resume {run_id}`"
        wait_for(browser, lambda d: "succeeded" in d.find_element(*css("#details .facts")).text
                 and not d.find_elements(*css("#answer-form")), "the node answered")
        screenshot(browser, "ui-answer-given")

        ok(af(tmp_path, "run", "approval.agentflow", "--resume", run_id))
        wait_for(browser, lambda d: d.find_element(*css("#run-status")).text == "succeeded", "the run to finish")
        click_box(browser, "main/decision")
        given = wait_for(browser, lambda d: [e.text for e in d.find_elements(*css("#details .message.answer"))],
                         "the answer")[0]
        assert given.split("\n") == ["answer by alice", "approve"]
        screenshot(browser, "ui-answer-resumed")


RECORD_SPEC = """
defaults {
  model = "scripted"
}

type Verdict {
  ok: bool
  reasons: list[str]
}

role reviewer {
  model = "human"
  task judge(topic: str) -> Verdict { prompt = "Judge {topic}." }
}

choreography main(topic: str = "tea") -> Verdict {
  return reviewer.judge(topic)
}
"""


def test_a_record_answer_is_typed_as_json_from_a_skeleton_of_its_fields(tmp_path, browser):
    write(tmp_path / "review.agentflow", RECORD_SPEC)
    run_id = wait_for_answer(tmp_path, "review.agentflow")
    with ui_server(tmp_path) as url:
        browser.get(f"{url}/runs/{run_id}")
        click_box(browser, "main/return@1")
        area = wait_for(browser, lambda d: d.find_elements(*css("textarea#answer-value")), "the JSON field")[0]
        skeleton = area.get_attribute("value")
        assert json.loads(skeleton) == {"ok": True, "reasons": []}
        area.clear()
        area.send_keys('{"ok": true')
        browser.find_element(*css("#answer-submit")).click()
        said = wait_for(browser, lambda d: d.find_element(*css("#answer-said.error")).text, "the reason it is refused")
        assert said.startswith("the answer is not JSON")
        area.clear()
        area.send_keys(skeleton)
        browser.find_element(*css("#answer-submit")).click()
        wait_for(browser, lambda d: d.find_element(*css("#notice")).text.startswith("answered main/return@1"),
                 "the answer taken")
        screenshot(browser, "ui-answer-record")

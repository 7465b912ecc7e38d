"""The chat page at / in a real headless Chromium (Debian's chromium and chromedriver, driven by selenium),
against the real server on the scripted model: streaming, Stop, reload, cache reuse, hostile model output,
the API key, a phone-sized screen, and axe-core's accessibility rules."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from api_helpers import ROOT, fake_server_args, serve
from scripted_session import HOSTILE, reply_to

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
AXE = ROOT / "tests" / "web" / "node_modules" / "axe-core" / "axe.min.js"
# Headless, and without the background connections this machine's closed network refuses.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1100,900")
KEY = "sesame-42"
WAIT_S = 60


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> WebDriver:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver "
                    "(.ci/run does; make test refuses to start without them)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with serve(fake_server_args(tiny_model_dir), tmp_path_factory.mktemp("web")) as s:
        yield s


@pytest.fixture(scope="module")
def key_server(tiny_model_dir, tmp_path_factory):
    with serve(fake_server_args(tiny_model_dir, "--api_key", KEY), tmp_path_factory.mktemp("web-key")) as s:
        yield s


@pytest.fixture(scope="module")
def thinking_server(make_tiny, tmp_path_factory):
    """The scripted model behind a Qwen3-style template: its "think" answers open with <think>...</think>."""
    model_dir = make_tiny(model_type="qwen3", thinking=True)
    with serve(fake_server_args(model_dir), tmp_path_factory.mktemp("web-thinking")) as s:
        yield s


def open_page(driver: WebDriver, url: str) -> None:
    """The page at url with nothing remembered from an earlier test."""
    driver.get(url + "/")
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")
    driver.refresh()
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#log .empty"))


def css(driver: WebDriver, selector: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, selector)


def ask(driver: WebDriver, text: str) -> None:
    box = driver.find_element(By.ID, "prompt")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def wait_answered(driver: WebDriver) -> WebElement:
    """The last assistant message once its answer has ended (the Send button is back)."""
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_element(By.ID, "send").is_displayed() and not css(d, ".streaming"))
    return css(driver, "#log .msg.assistant")[-1]


def body_text(message: WebElement) -> str:
    return message.find_element(By.CSS_SELECTOR, ".body").get_attribute("textContent")


def status(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "status").get_attribute("textContent")


def record_requests(driver: WebDriver) -> None:
    """From now until the next load, keep the body of every request the page sends (sent_bodies)."""
    driver.execute_script("window.__sent = []; const send = window.fetch;"
                          "window.fetch = (url, init) => {"
                          "  if (init && init.body) window.__sent.push(JSON.parse(init.body));"
                          "  return send(url, init); };")


def sent_bodies(driver: WebDriver) -> list[dict]:
    return driver.execute_script("return window.__sent")


def axe_violations(driver: WebDriver) -> list[dict]:
    """axe-core's serious and critical findings on the page as it is now."""
    if not AXE.is_file():
        pytest.fail(f"{AXE} missing: run `make test` (it runs npm ci in tests/web)")
    driver.execute_script(AXE.read_text())
    driver.set_script_timeout(WAIT_S)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document).then(r => done(JSON.stringify(r.violations)), e => done(JSON.stringify(String(e))));")
    violations = json.loads(result)
    assert isinstance(violations, list), violations
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["html"] for n in v["nodes"]]}
            for v in violations if v["impact"] in ("serious", "critical")]


# ---- the page is served, or not ---------------------------------------------------------------------

def test_page_and_its_files_are_served_with_a_strict_policy(server) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert 'name="viewport"' in page.text
    for name, kind in (("chat.js", "javascript"), ("render.js", "javascript"), ("chat.css", "text/css")):
        r = httpx.get(f"{server.url}/web/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], name
        assert r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server.url + "/web/%2e%2e/app.py").status_code == 404
    assert httpx.get(server.url + "/web/nothing.js").status_code == 404
    # the page is outside the API: it does not show up in the OpenAPI document clients read
    assert "/" not in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_no_web_ui_turns_the_page_off(tiny_model_dir) -> None:
    from api import parse_args
    from config import ServerOptions
    from core.flags import from_args
    from scripted_session import scripted_inference
    from server.app import create_app

    model = ["--hf_model_dir", str(tiny_model_dir)]
    assert from_args(ServerOptions, parse_args([*model, "--no_web_ui"])).no_web_ui is True
    assert from_args(ServerOptions, parse_args(model)).no_web_ui is False
    inference = scripted_inference(str(tiny_model_dir))
    off = TestClient(create_app(inference, "m", no_web_ui=True, allowed_hosts="testserver"))  # no `with`: the worker is not needed
    for path in ("/", "/web/chat.js"):
        r = off.get(path)
        assert r.status_code == 404 and r.json()["error"]["message"].startswith("Unknown request URL"), path
    assert TestClient(create_app(inference, "m", allowed_hosts="testserver")).get("/").status_code == 200


# ---- in the browser ------------------------------------------------------------------------------------

def test_streams_stops_reloads_and_reuses_the_cache(browser, server) -> None:
    open_page(browser, server.url)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "model-name").text == "fake-model")
    cancelled_before = server.health()["cancelled"]
    ask(browser, "slow please")

    # The answer grows in place while it streams: several polls see it longer each time.
    lengths: list[int] = []
    deadline = time.monotonic() + WAIT_S
    while len(set(lengths)) < 5 and time.monotonic() < deadline:
        answers = css(browser, "#log .msg.assistant.streaming")
        if answers:
            lengths.append(len(body_text(answers[-1])))
        time.sleep(0.1)
    grown = sorted(set(lengths))
    assert len(grown) >= 5 and lengths == sorted(lengths), lengths
    assert server.health()["busy"] is True

    browser.find_element(By.ID, "stop").click()
    health = server.wait_idle()
    assert health["busy"] is False and health["queued"] == 0
    assert health["cancelled"] == cancelled_before + 1
    answer = wait_answered(browser)
    partial = body_text(answer)
    assert partial.startswith("tick tick") and len(partial) < len(reply_to("user", "slow please"))
    assert "stopped after" in answer.find_element(By.CSS_SELECTOR, ".meta").text
    time.sleep(0.5)
    assert body_text(css(browser, "#log .msg.assistant")[-1]) == partial  # nothing arrives after Stop

    browser.refresh()  # the conversation comes back from localStorage
    WebDriverWait(browser, WAIT_S).until(lambda d: len(css(d, "#log .msg")) == 2)
    user, answer = css(browser, "#log .msg")
    assert body_text(user) == "slow please" and body_text(answer) == partial

    record_requests(browser)
    ask(browser, "count to ten")
    answer = wait_answered(browser)
    assert body_text(answer) == reply_to("user", "count to ten")
    line = answer.find_element(By.CSS_SELECTOR, ".meta").text
    assert re.search(r"first token \d+\.\d\ds \| decode \d+\.\d tok/s \| total \d+\.\d tok/s", line), line
    reused = re.search(r"(\d+) prompt tokens \((\d+) reused\), (\d+) new", line)
    assert reused, line
    prompt, cached, new = map(int, reused.groups())
    assert 0 < cached < prompt and new > 5, line
    assert len(css(browser, "#log .msg")) == 4
    (sent,) = sent_bodies(browser)
    assert sent["messages"] == [{"role": "system", "content": "You are a helpful assistant."},
                                {"role": "user", "content": "slow please"},
                                {"role": "assistant", "content": partial},
                                {"role": "user", "content": "count to ten"}]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_model_output_is_shown_as_text_and_never_run(browser, server) -> None:
    open_page(browser, server.url)
    ask(browser, "html please")
    answer = wait_answered(browser)
    assert browser.execute_script("return window.__pwned") is None
    shown = body_text(answer)
    for piece in ("<script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">',
                  "[click me](javascript:window.__pwned=3)", '<a href="javascript:window.__pwned=4">this</a>',
                  '<iframe srcdoc="<script>parent.__pwned = 5</script>"></iframe>'):
        assert piece in shown, piece
    # The renderer made no element out of the model's markup (the page's CSP would block most of it too,
    # so this is what shows the renderer itself is safe), and **bold** is the one piece of markdown drawn.
    log = browser.find_element(By.ID, "log")
    assert log.find_elements(By.CSS_SELECTOR, "script, img, iframe, a, [onerror], [href], [srcdoc]") == []
    assert [b.get_attribute("textContent") for b in log.find_elements(By.CSS_SELECTOR, "strong")] == \
        ["bold <b>tag</b>"]
    answer.find_element(By.CSS_SELECTOR, ".body").click()
    browser.refresh()  # and it stays inert when it comes back from storage
    WebDriverWait(browser, WAIT_S).until(lambda d: len(css(d, "#log .msg")) == 2)
    assert body_text(css(browser, "#log .msg.assistant")[-1]) == HOSTILE.replace("**", "")
    assert browser.execute_script("return window.__pwned") is None


def test_thinking_is_shown_folded_above_the_answer(browser, thinking_server) -> None:
    open_page(browser, thinking_server.url)
    ask(browser, "think")
    answer = wait_answered(browser)
    (box,) = answer.find_elements(By.CSS_SELECTOR, "details.thinking")
    thought = box.find_element(By.CSS_SELECTOR, ".thought")
    assert box.get_attribute("open") is None and not thought.is_displayed()
    assert box.find_element(By.CSS_SELECTOR, "summary").text == "Thinking"
    assert thought.get_attribute("textContent") == "Let me see." and body_text(answer) == "The answer is 4."
    box.find_element(By.CSS_SELECTOR, "summary").click()
    assert box.get_attribute("open") is not None and thought.is_displayed()
    assert axe_violations(browser) == []  # the box, open, keeps the page's contrast and names

    browser.refresh()  # kept with the conversation, folded again
    WebDriverWait(browser, WAIT_S).until(lambda d: len(css(d, "#log .msg")) == 2)
    (box,) = css(browser, "#log .msg.assistant details.thinking")
    assert box.get_attribute("open") is None
    record_requests(browser)
    ask(browser, "hello")  # the thinking is not sent back
    assert body_text(wait_answered(browser)) == "You said: hello"
    (sent,) = sent_bodies(browser)
    assert sent["messages"][1:] == [{"role": "user", "content": "think"},
                                    {"role": "assistant", "content": "The answer is 4."},
                                    {"role": "user", "content": "hello"}]
    assert not css(browser, "#log .msg.assistant")[-1].find_elements(By.CSS_SELECTOR, "details.thinking")


def test_code_blocks_are_code_with_a_copy_button(browser, server) -> None:
    open_page(browser, server.url)
    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    ask(browser, "code please")
    answer = wait_answered(browser)
    block = answer.find_element(By.CSS_SELECTOR, "figure.code")
    assert block.find_element(By.CSS_SELECTOR, "pre > code").get_attribute("textContent") == "print('hi')"
    assert block.find_element(By.CSS_SELECTOR, "figcaption span").text == "python"
    assert [p.get_attribute("textContent") for p in answer.find_elements(By.CSS_SELECTOR, ".prose")] == \
        ["Here:", "Done."]
    button = block.find_element(By.CSS_SELECTOR, "button.copy")
    button.click()
    WebDriverWait(browser, WAIT_S).until(lambda d: button.text == "Copied")
    browser.set_script_timeout(WAIT_S)
    copied = browser.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, e => done('error: ' + e));")
    assert copied == "print('hi')"


def test_settings_reach_the_request_and_new_chat_starts_over(browser, server) -> None:
    open_page(browser, server.url)
    browser.find_element(By.CSS_SELECTOR, "#settings summary").click()
    system = browser.find_element(By.ID, "system-prompt")
    system.clear()
    system.send_keys("Answer in French.")
    browser.find_element(By.ID, "max-tokens").send_keys("3")
    browser.find_element(By.ID, "temperature").send_keys("0.5")
    record_requests(browser)
    ask(browser, "count please")
    answer = wait_answered(browser)
    (sent,) = sent_bodies(browser)
    assert sent["messages"] == [{"role": "system", "content": "Answer in French."},
                                {"role": "user", "content": "count please"}]
    assert sent["temperature"] == 0.5 and sent["max_tokens"] == 3
    # max_tokens 3 cut the scripted answer after three tokens, and the page says why it stopped
    assert len(body_text(answer)) < len(reply_to("user", "count please"))
    assert "3 new | stopped: length limit" in answer.find_element(By.CSS_SELECTOR, ".meta").text
    browser.refresh()
    assert browser.find_element(By.ID, "system-prompt").get_attribute("value") == "Answer in French."
    assert browser.find_element(By.ID, "max-tokens").get_attribute("value") == "3"
    browser.find_element(By.ID, "new-chat").click()
    assert css(browser, "#log .msg") == [] and css(browser, "#log .empty")
    browser.refresh()
    assert css(browser, "#log .msg") == []


def test_api_key_is_asked_for_and_refusals_are_explained(browser, key_server) -> None:
    open_page(browser, key_server.url)
    need = "This server needs an API key: enter it under Settings."
    WebDriverWait(browser, WAIT_S).until(lambda d: status(d) == need)
    key = browser.find_element(By.ID, "api-key")
    assert key.is_displayed()
    ask(browser, "hello key")
    WebDriverWait(browser, WAIT_S).until(lambda d: browser.find_element(By.ID, "send").is_displayed())
    assert status(browser) == need and css(browser, "#log .msg") == []
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == "hello key"  # ready to send again

    key.send_keys("wrong", Keys.TAB)
    wrong = "The server refused this API key: check it under Settings."
    WebDriverWait(browser, WAIT_S).until(lambda d: status(d) == wrong)
    assert axe_violations(browser) == []  # the page with its key field and the message

    key.clear()
    key.send_keys(KEY, Keys.TAB)
    WebDriverWait(browser, WAIT_S).until(lambda d: status(d) == "" and
                                         d.find_element(By.ID, "model-name").text == "fake-model")
    browser.find_element(By.ID, "prompt").send_keys(Keys.ENTER)
    assert body_text(wait_answered(browser)) == "You said: hello key"
    assert status(browser) == ""


def test_fits_a_phone_screen(browser, server) -> None:
    open_page(browser, server.url)
    ask(browser, "code please")
    wait_answered(browser)
    browser.set_window_size(390, 844)
    try:
        width = browser.execute_script("return window.innerWidth")
        assert width <= 400
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width
        for element in ("prompt", "send", "new-chat"):
            box = browser.find_element(By.ID, element).rect
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, element
    finally:
        browser.set_window_size(1100, 900)


def test_no_serious_accessibility_violations(browser, server) -> None:
    open_page(browser, server.url)
    assert axe_violations(browser) == []  # empty chat
    ask(browser, "code please")
    wait_answered(browser)
    browser.find_element(By.CSS_SELECTOR, "#settings summary").click()
    assert axe_violations(browser) == []  # a conversation with code, the speed line, the settings open

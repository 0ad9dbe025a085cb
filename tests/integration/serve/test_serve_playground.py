"""The chat playground (spec.playground) in a real headless browser: Debian's chromium driven by Selenium loads
/playground from the app on a local Ray Serve, sends a message and watches the answer stream into the assistant's
bubble; a screenshot is saved under the test's tmp_path (and $KUBEFORGE_TEST_ARTIFACTS when set).

chromium and chromedriver come from scripts/setup-browser.sh (run by `scripts/dev test`)."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "play"
MAX_TOKENS = 48
PAGE_TIMEOUT_S = 60
ANSWER_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def base_url(local_ray, chat_dir: Path, deployment_resource) -> str:
    """The chat model served with its playground; greedy by default so the page's answer is reproducible."""
    from kubeforge_trainer.serve import serve_locally

    resource = deployment_resource(
        NAME,
        modelUri=str(chat_dir),
        resources={"cpu": "500m", "memory": "512Mi"},
        generation={"maxTokens": MAX_TOKENS, "temperature": 0},
        playground=True,
    )
    return serve_locally({"resource": resource, "modelVersion": "v1"}, http_port=local_ray.http_port, route_prefix="/p")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless chromium through chromedriver (Selenium)."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        reason = "chromium and chromedriver are not installed (run scripts/setup-browser.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must run the playground's browser test")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    """PNG of the page in tmp_path, copied to $KUBEFORGE_TEST_ARTIFACTS when set."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    artifacts = os.environ.get("KUBEFORGE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / name)
    return path


def test_playground_streams_the_engines_answer_into_the_page(base_url: str, browser, tmp_path: Path) -> None:
    from kubeforge_trainer.serve.playground import CHAT_ID, MESSAGE_ID, MODEL_ID
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    message = "Return the value of the path"
    # Greedy on both sides: the page must show the engine's own answer to the same chat.
    body = {"model": NAME, "messages": [{"role": "user", "content": message}], "max_tokens": MAX_TOKENS}
    expected = words(requests.post(base_url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0])
    assert expected

    browser.get(base_url + "/playground/")
    box = WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, f"#{MESSAGE_ID} textarea"))
    )
    # The model picker offers what /v1/models serves (the base model here).
    picker = browser.find_element(By.CSS_SELECTOR, f"#{MODEL_ID} input")
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(lambda _: picker.get_attribute("value") == NAME)
    box.send_keys(message)
    box.send_keys(Keys.ENTER)

    seen: list[str] = []  # every distinct text of the assistant's bubble, in order
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    busy = False  # the message box is disabled while an answer streams: enabled again after that, it is done
    while time.monotonic() < deadline:
        enabled = box.is_enabled()
        finished, busy = busy and enabled, busy or not enabled
        bubbles = browser.find_elements(By.CSS_SELECTOR, f"#{CHAT_ID} .message.bot")
        text = " ".join(bubbles[-1].text.split()) if bubbles else ""
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        if finished:
            break
        time.sleep(0.02)
    screenshot = save_screenshot(browser, tmp_path, "playground.png")
    assert seen, f"no assistant answer appeared in {ANSWER_TIMEOUT_S}s (screenshot: {screenshot})"
    assert seen[-1] == expected, f"the page shows {seen[-1]!r}, the API answered {expected!r}"
    # Gradio shows a placeholder ("Loading content") until the first token; from then on the bubble only grows.
    answer = seen[next(i for i, text in enumerate(seen) if expected.startswith(text)) :]
    assert len(answer) >= 2, f"the answer arrived in one piece, not streamed: {seen}"
    assert all(b.startswith(a) for a, b in itertools.pairwise(answer)), seen


def words(choice: dict) -> str:
    """A chat answer's text with whitespace runs as single spaces (as the page's rendering shows it)."""
    return " ".join(choice["message"]["content"].split())


def test_with_api_keys_the_page_asks_for_a_key_as_its_password() -> None:
    """spec.auth: the page (mounted as the app mounts it) opens only after a login whose password is an API key."""
    from kubeforge.api.modeldeployment import GenerationDefaults, RequestLimits
    from kubeforge_trainer.serve.playground import PATH, build_blocks, mount
    from starlette.testclient import TestClient

    async def answer(body: dict) -> None:
        raise AssertionError("no chat is sent before the login")

    blocks = build_blocks(NAME, lambda: [NAME], answer, GenerationDefaults(), RequestLimits())
    with TestClient(mount(blocks, [b"key-one", b"key-two"])) as page:
        assert page.get(f"{PATH}/config").status_code == 401
        assert page.post(f"{PATH}/login", data={"username": "me", "password": "wrong"}).status_code == 400
        assert page.get(f"{PATH}/config").status_code == 401
        assert page.post(f"{PATH}/login", data={"username": "me", "password": "key-two"}).status_code == 200
        config = page.get(f"{PATH}/config")
        assert config.status_code == 200 and config.json()["mode"] == "blocks"

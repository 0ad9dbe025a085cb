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
ADAPTER = "terse"
MAX_TOKENS = 48
PAGE_TIMEOUT_S = 60
ANSWER_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def base_url(local_ray, chat_dir: Path, deployment_resource, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The chat model and a LoRA adapter served with the playground; greedy by default, so answers are reproducible."""
    from kubeforge_trainer.serve import serve_locally
    from support.tiny_models import build_tiny_lora_adapter

    adapter = build_tiny_lora_adapter(chat_dir, tmp_path_factory.mktemp(ADAPTER), seed=1)
    resource = deployment_resource(
        NAME,
        modelUri=str(chat_dir),
        resources={"cpu": "500m", "memory": "512Mi"},
        generation={"maxTokens": MAX_TOKENS, "temperature": 0},
        adapters=[{"name": ADAPTER, "uri": str(adapter)}],
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


def test_playground_streams_the_engines_answers_into_the_page(base_url: str, browser, tmp_path: Path) -> None:
    from kubeforge_trainer.serve.playground import MESSAGE_ID, MODEL_ID
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(base_url + "/playground/")
    box = WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, f"#{MESSAGE_ID} textarea"))
    )
    picker = browser.find_element(By.CSS_SELECTOR, f"#{MODEL_ID} input")
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(lambda _: picker.get_attribute("value") == NAME)

    # Greedy on both sides: the page must show the engine's own answer to the same chat.
    first = [{"role": "user", "content": "Return the value of the path"}]
    expected = api_answer(base_url, NAME, first)
    seen = send(browser, box, first[-1]["content"])
    save_screenshot(browser, tmp_path, "playground.png")
    assert seen, f"no assistant answer appeared in {ANSWER_TIMEOUT_S}s (screenshot in {tmp_path})"
    assert seen[-1] == words(expected), f"the page shows {seen[-1]!r}, the API answered {expected!r}"
    # Gradio shows a placeholder ("Loading content") until the first token; from then on the bubble only grows.
    answer = seen[next(i for i, text in enumerate(seen) if words(expected).startswith(text)) :]
    assert len(answer) >= 2, f"the answer arrived in one piece, not streamed: {seen}"
    assert all(b.startswith(a) for a, b in itertools.pairwise(answer)), seen

    # The picker offers the adapter (as /v1/models does); the next turn goes to it, with the conversation so far.
    picker.click()
    option = WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, f"#{MODEL_ID} li[role='option'][aria-label='{ADAPTER}']"))
    )
    option.click()
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(lambda _: picker.get_attribute("value") == ADAPTER)
    second = [*first, {"role": "assistant", "content": expected}, {"role": "user", "content": "Open the file"}]
    adapted = api_answer(base_url, ADAPTER, second)
    assert adapted != api_answer(base_url, NAME, second)  # the adapter changes the answer, so the pick is visible
    seen = send(browser, box, second[-1]["content"])
    save_screenshot(browser, tmp_path, "playground-adapter.png")
    assert seen and seen[-1] == words(adapted), f"the page shows {seen[-1:]!r}, {ADAPTER} answered {adapted!r}"


def api_answer(base_url: str, model: str, messages: list[dict[str, str]]) -> str:
    """The app's own greedy /v1/chat/completions answer."""
    body = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS}
    reply = requests.post(base_url + "/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def send(browser, box, message: str) -> list[str]:
    """Send a message on the page; every distinct text of the newest assistant bubble until the answer ends."""
    from kubeforge_trainer.serve.playground import CHAT_ID
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = len(browser.find_elements(By.CSS_SELECTOR, f"#{CHAT_ID} .message.bot"))
    box.send_keys(message)
    box.send_keys(Keys.ENTER)
    seen: list[str] = []
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    busy = False  # the message box is disabled while an answer streams: enabled again after that, it is done
    while time.monotonic() < deadline:
        try:
            enabled = box.is_enabled()
            bubbles = browser.find_elements(By.CSS_SELECTOR, f"#{CHAT_ID} .message.bot")[before:]
            text = words(bubbles[-1].text) if bubbles else ""
        except StaleElementReferenceException:  # Gradio replaced the bubble while it streamed: look again
            continue
        finished, busy = busy and enabled, busy or not enabled
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        if finished:
            break
        time.sleep(0.02)
    return seen


def words(text: str) -> str:
    """Text with whitespace runs as single spaces (as the page's rendering shows it)."""
    return " ".join(text.split())


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

"""The web chat page in headless Chromium (Debian's `chromium`, driven by Playwright)."""
import json
import shutil

import pytest
from conftest import SERVE_API_KEY

from serve.api.redis_context import KEY

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture
def page(serve_app):
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            tab = browser.new_page()
            tab.goto(f"{serve_app}/#key={SERVE_API_KEY}")  # the key from the fragment, as a user would paste it
            yield tab
        finally:
            browser.close()


def test_type_a_message_see_the_reply_then_reset(page, redis_db):
    from playwright.sync_api import expect

    page.fill("#name", "Monica Geller")
    page.dispatch_event("#name", "change")
    page.fill("#message", "Who ate my cookies?")
    page.click("#send")
    expect(page.locator(".turn.user .text")).to_have_text("Who ate my cookies?")
    reply = page.locator(".turn.assistant.done .text")
    expect(reply).to_have_count(1, timeout=180_000)
    text = reply.inner_text()
    assert text.strip()
    assert page.locator("#status").inner_text() == ""
    assert "#key" not in page.url  # the key does not linger in the address bar

    channel = page.evaluate("localStorage.getItem('chandler-channel')")
    turns = [json.loads(t) for t in redis_db.lrange(KEY.format(channel), 0, -1)]
    assert [(t["role"], t["name"], t["text"]) for t in turns] == [
        ("user", "Monica Geller", "Who ate my cookies?"), ("assistant", "Chandler", text)]

    page.click("#reset")
    expect(page.locator(".turn")).to_have_count(0)
    assert not redis_db.exists(KEY.format(channel))

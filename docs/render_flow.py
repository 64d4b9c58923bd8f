"""Renders discord-flow.html (a mock Discord thread) to discord-flow.png for the README, with headless Chromium.

`python docs/render_flow.py`; the emoji need a colour emoji font (Debian: fonts-noto-color-emoji)."""

from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"  # Debian's, as the web page test uses


def main() -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 980, "height": 400}, device_scale_factor=1)
        page.goto((HERE / "discord-flow.html").as_uri())
        page.screenshot(path=str(HERE / "discord-flow.png"), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()

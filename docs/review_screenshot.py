"""Make docs/review.png: the review page of a running server, showing a cat drawn here with Pillow.

The licensed photos may not be re-published, so the screenshot shows a synthetic picture: it is sent to
``/classify?flag=true`` (a client asking for review), so the queue holds it whatever the model answered.

    python docs/review_screenshot.py --url http://127.0.0.1:3000 --token "$REVIEW_TOKEN" [--out docs/review.png]

The server needs ``REVIEW_DIR`` and ``REVIEW_TOKEN``, and an empty queue (the page shows the oldest photo first).
Needs Playwright and Debian's chromium (``pip install -e .[test]``, ``apt-get install chromium``).
"""
from __future__ import annotations

import argparse
import importlib.util
import io
from pathlib import Path

import httpx


def _demo_screenshot():
    """docs/demo_screenshot.py (a script, not a package): its drawn cat and its page saver serve both screenshots."""
    spec = importlib.util.spec_from_file_location("demo_screenshot", Path(__file__).with_name("demo_screenshot.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL of a running server with a model and a review queue")
    parser.add_argument("--token", required=True, help="the server's REVIEW_TOKEN")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("review.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    demo = _demo_screenshot()
    buf = io.BytesIO()
    demo.drawn_cat().save(buf, "PNG")
    r = httpx.post(f"{args.url}/classify?flag=true", files={"image": ("cat.png", buf.getvalue(), "image/png")},
                   timeout=60)
    r.raise_for_status()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 820, "height": 760})
        page.goto(f"{args.url}/review")
        page.fill("#token", args.token)
        page.keyboard.press("Enter")
        expect(page.get_by_test_id("answer")).not_to_be_empty(timeout=60_000)
        page.wait_for_function("() => ['photo', 'cam'].every(id => document.getElementById(id).naturalWidth > 0)",
                               timeout=60_000)
        demo.save_page(page, args.out)
        answer = page.get_by_test_id("answer").inner_text()
        browser.close()
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KiB; the page said {answer!r}")


if __name__ == "__main__":
    main()

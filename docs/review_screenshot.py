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
import tempfile
from pathlib import Path

import httpx
from PIL import Image


def drawn_cat() -> Image.Image:
    """docs/demo_screenshot.py's cartoon cat (one drawing for both screenshots)."""
    spec = importlib.util.spec_from_file_location("demo_screenshot", Path(__file__).with_name("demo_screenshot.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.drawn_cat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL of a running server with a model and a review queue")
    parser.add_argument("--token", required=True, help="the server's REVIEW_TOKEN")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("review.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    buf = io.BytesIO()
    drawn_cat().save(buf, "PNG")
    r = httpx.post(f"{args.url}/classify?flag=true", files={"image": ("cat.png", buf.getvalue(), "image/png")},
                   timeout=60)
    r.raise_for_status()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 820, "height": 760})
        page.goto(f"{args.url}/review")
        page.fill("#token", args.token)
        page.keyboard.press("Enter")
        expect(page.get_by_test_id("answer")).not_to_be_empty(timeout=60_000)
        page.wait_for_function("() => ['photo', 'cam'].every(id => document.getElementById(id).naturalWidth > 0)",
                               timeout=60_000)
        shot = Path(tmp) / "shot.png"
        page.screenshot(path=str(shot), full_page=True)
        answer = page.get_by_test_id("answer").inner_text()
        browser.close()
        # 256 colours keep the flat page and the drawing sharp at a fraction of the size
        Image.open(shot).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KiB; the page said {answer!r}")


if __name__ == "__main__":
    main()

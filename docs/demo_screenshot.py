"""Make docs/demo.png: the demo page of a running server, classifying a cat drawn here with Pillow.

The licensed photos may not be re-published, so the README's screenshot shows a synthetic picture instead.

    python docs/demo_screenshot.py --url http://127.0.0.1:3000 [--out docs/demo.png]

Needs Playwright and Debian's chromium (``pip install -e .[test]``, ``apt-get install chromium``).
"""
from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw


def drawn_cat(size: int = 320) -> Image.Image:
    """A flat cartoon cat face: head, ears, eyes, nose, mouth and whiskers."""
    img = Image.new("RGB", (size, size), (196, 224, 238))
    d = ImageDraw.Draw(img)
    s = size / 320
    fur, dark, pink = (222, 140, 60), (60, 40, 30), (240, 150, 160)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * s, y0 * s, x1 * s, y1 * s]

    for sign in (-1, 1):  # ears, outer then inner
        d.polygon([((160 + sign * 115) * s, 35 * s), ((160 + sign * 25) * s, 115 * s),
                   ((160 + sign * 110) * s, 160 * s)], fill=fur, outline=dark, width=max(1, int(3 * s)))
        d.polygon([((160 + sign * 100) * s, 60 * s), ((160 + sign * 45) * s, 115 * s),
                   ((160 + sign * 98) * s, 145 * s)], fill=pink)
    d.ellipse(box(45, 80, 275, 290), fill=fur, outline=dark, width=max(1, int(3 * s)))
    for x in (85, 125, 175, 215):  # tabby stripes on the forehead
        d.line(box(x + 10, 95, x + 10 + (160 - x) * 0.15, 130), fill=(170, 95, 35), width=max(1, int(6 * s)))
    for cx in (115, 205):  # eyes with slit pupils
        d.ellipse(box(cx - 24, 150, cx + 24, 190), fill=(150, 200, 60), outline=dark, width=max(1, int(2 * s)))
        d.ellipse(box(cx - 5, 152, cx + 5, 188), fill=dark)
    d.polygon([(148 * s, 210 * s), (172 * s, 210 * s), (160 * s, 224 * s)], fill=pink, outline=dark)
    d.line(box(160, 224, 160, 236), fill=dark, width=max(1, int(2 * s)))
    d.arc(box(136, 222, 160, 250), 0, 180, fill=dark, width=max(1, int(2 * s)))
    d.arc(box(160, 222, 184, 250), 0, 180, fill=dark, width=max(1, int(2 * s)))
    for dy in (-10, 2, 14):  # whiskers
        d.line(box(130, 226 + dy / 3, 40, 214 + dy), fill=dark, width=max(1, int(2 * s)))
        d.line(box(190, 226 + dy / 3, 280, 214 + dy), fill=dark, width=max(1, int(2 * s)))
    return img


def save_page(page, out: Path) -> None:
    """A full-page screenshot of a Playwright ``page`` as a PNG at ``out``."""
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    # 256 colours keep the flat page and the drawing sharp at a fraction of the size
    shot.quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL of a running server with a model")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("demo.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        picture = Path(tmp) / "drawn-cat.png"
        drawn_cat().save(picture)
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 760, "height": 600})
        page.goto(f"{args.url}/demo")
        page.set_input_files("#file", picture)
        expect(page.get_by_test_id("label")).not_to_be_empty(timeout=60_000)
        page.wait_for_function("() => document.querySelector('[data-testid=cam]').naturalWidth > 0", timeout=60_000)
        page.locator("#drop").focus()  # show the visible focus ring too
        save_page(page, args.out)
        label = page.get_by_test_id("label").inner_text()
        browser.close()
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KiB; the page said {label!r}")


if __name__ == "__main__":
    main()

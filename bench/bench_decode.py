"""JPEG decoding at reduced scale (Pillow's draft) against a full decode and resize, on 12-megapixel photos.

    python -m bench.bench_decode [--n 20] [--json FILE]

The 12 MP JPEGs are the project's test photos upscaled to 4000x3000 in memory (nothing is written).
Target: the draft path >= 3 x faster than a full decode followed by the same resize and crop.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.common import test_photos
from imgcls.images import decode_image
from imgcls.preprocess import Preprocess


def twelve_megapixel_jpegs(n: int) -> list[bytes]:
    out = []
    for path in test_photos()[:: max(1, 600 // n)][:n]:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def full_decode(data: bytes, pre: Preprocess) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return pre(img)


def draft_decode(data: bytes, pre: Preprocess) -> np.ndarray:
    return pre(decode_image(data, draft_size=pre.resize_size))


def timed(fn, items: list[bytes], pre: Preprocess, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for data in items:
            fn(data, pre)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    pre = Preprocess()
    jpegs = twelve_megapixel_jpegs(args.n)
    diff = np.abs(draft_decode(jpegs[0], pre) - full_decode(jpegs[0], pre)).mean()
    full, draft = timed(full_decode, jpegs, pre), timed(draft_decode, jpegs, pre)
    result = {"images": len(jpegs), "size": "4000x3000", "full_decode_ms": full * 1000, "draft_decode_ms": draft * 1000,
              "speedup": full / draft, "mean_abs_diff_normalized": float(diff)}
    print(f"12 MP JPEG -> 224x224 input, {len(jpegs)} photos (best of 3):")
    print(f"  full decode + resize  {full * 1000:7.1f} ms/image")
    print(f"  draft decode + resize {draft * 1000:7.1f} ms/image")
    print(f"  speedup {full / draft:.1f}x  (mean |difference| of the normalised inputs: {diff:.4f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

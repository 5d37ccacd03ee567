"""Wheels that travel to the GPU machine in pieces: split here, joined and installed there.

    python -m bench.gpu.wheels install --stage /tmp/gpu-stage --target /tmp/site

``MANIFEST.json`` (written by :mod:`bench.gpu.prepare`) lists every wheel with its sha256 and, for a wheel too large
for one call, its pieces in order. Installing joins the pieces, checks every wheel's sha256 and refuses to install
anything when one is missing or differs, then installs all wheels into ``--target`` with no index and no
dependency resolution (the manifest already holds the resolved set). Standard library only: it runs before anything
is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

MANIFEST = "MANIFEST.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split(wheel: Path, piece_bytes: int, out_dir: Path) -> list[str]:
    """Write ``wheel`` as ``<name>.part-NN`` files of at most ``piece_bytes`` into ``out_dir``; their names."""
    names = []
    with open(wheel, "rb") as f:
        for n, chunk in enumerate(iter(lambda: f.read(piece_bytes), b"")):
            name = f"{wheel.name}.part-{n:02d}"
            (out_dir / name).write_bytes(chunk)
            names.append(name)
    return names


def join_and_check(stage: Path) -> list[Path]:
    """Every wheel of the manifest in ``stage``, joined from its pieces where it travelled in pieces and checked
    against its sha256; raises SystemExit naming what is missing or wrong."""
    manifest = json.loads((stage / MANIFEST).read_text())
    wheels, problems = [], []
    for entry in manifest["wheels"]:
        target = stage / entry["file"]
        pieces = [stage / p for p in entry.get("pieces", [])]
        if pieces and not (target.is_file() and sha256(target) == entry["sha256"]):
            missing = [p.name for p in pieces if not p.is_file()]
            if missing:
                problems.append(f"{entry['file']}: pieces not staged: {', '.join(missing)}")
                continue
            with open(target, "wb") as out:
                for p in pieces:
                    out.write(p.read_bytes())
        if not target.is_file():
            problems.append(f"{entry['file']}: not staged")
        elif sha256(target) != entry["sha256"]:
            problems.append(f"{entry['file']}: sha256 differs from the manifest (a broken transfer: stage it again)")
        else:
            wheels.append(target)
    if problems:
        raise SystemExit("wheels not ready:\n  " + "\n  ".join(problems))
    return wheels


def install(stage: Path, target: Path) -> None:
    wheels = join_and_check(stage)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)], check=True)
    print(f"installed {len(wheels)} wheels into {target}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.wheels", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("install", help="join, check and install the staged wheels")
    i.add_argument("--stage", type=Path, required=True)
    i.add_argument("--target", type=Path, required=True)
    args = p.parse_args(argv)
    install(args.stage, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

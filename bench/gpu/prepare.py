"""Prepare a GPU run HERE (PyPI reachable): wheels, photos and a model in git-ignored ``.gpu/``, packed into carry
folders that each fit one device call, and the plan of calls.

    python -m bench.gpu.prepare [--model current] [--artifacts DIR] [--photos 600]

Writes ``.gpu/wheels/`` (every wheel the GPU machine lacks, resolved for CPython 3.12 manylinux x86-64),
``.gpu/carry/1..N/`` (pieces of the large wheels and whole small ones, each with ``SHA256SUMS``; the last one also
holds ``MANIFEST.json``), ``.gpu/photos/`` (test photos, licensed: never committed), ``.gpu/artifacts/`` (one model
version copied from the registry, promoted there) and ``.gpu/PLAN.md`` + ``.gpu/plan.json`` (the exact device calls,
with each call's measured size against the 64 MiB limit). Run it from the checkout the device calls are made from:
the device tool sends that checkout.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

from bench.gpu.wheels import MANIFEST, sha256, split
from imgcls.metadata import METADATA_FILE
from imgcls.registry import PROJECT_ROOT, Registry
from training.data import SHARED_DATA

GPU = PROJECT_ROOT / ".gpu"
CALL_LIMIT = 64 << 20  # what one device call may carry, the working tree included
CALL_BUDGET = 60 << 20  # what this plan lets one call carry: room for files the tree gains before the run
PIECE = 56 << 20
# The GPU machine's Python (KINDS.md): wheels for it, not for this machine's interpreter.
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64",
             "manylinux1_x86_64"]
TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
          *[a for p in PLATFORMS for a in ("--platform", p)]]
# Beyond the serve-gpu extra: GPU JPEG decoding and its nvJPEG library, the load generator, the live-server helper.
# nvJPEG of CUDA 13.0, the machine's CUDA runtime (torch 2.11+cu130; driver 580 is CUDA 13.0).
EXTRA = ["nvidia-nvimgcodec-cu13==0.9.0.20", "nvidia-nvjpeg~=13.0.0", "aiohttp>=3.9", "httpx>=0.27"]
# Binary packages the GPU machine already has, built against its other packages: theirs are used, not carried.
# Its CUDA 13 runtime, cuBLAS and cuDNN (torch's pip packages) serve onnxruntime-gpu, hence no [cuda,cudnn] extras.
MACHINE_HAS = {"numpy", "pillow"}


def requirements() -> list[str]:
    """The project's own dependencies, its ``serve-gpu`` extra without the CUDA library extras, and :data:`EXTRA`."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    serve_gpu = [re.sub(r"\[[^]]*\]", "", r) for r in project["optional-dependencies"]["serve-gpu"]]
    return [*project["dependencies"], *serve_gpu, *EXTRA]


def resolve(reqs: list[str]) -> dict[str, str]:
    """name -> version of everything ``reqs`` need on the GPU machine's Python (pip's resolver, a dry run)."""
    report = GPU / "resolve-report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--report",
                    str(report), "--target", str(GPU / "unused"), *TARGET, *reqs], check=True)
    found = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in found}


def download(pins: dict[str, str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder), *TARGET,
                    *[f"{n}=={v}" for n, v in sorted(pins.items())]], check=True)
    wanted = {n.replace("-", "_") for n in pins}
    wheels = sorted(p for p in folder.glob("*.whl") if p.name.split("-")[0].lower() in wanted)
    if len(wheels) != len(pins):
        sys.exit(f"expected {len(pins)} wheels in {folder}, found {len(wheels)}: remove stale ones and run again")
    return wheels


def copy_photos(n: int, dest: Path) -> int:
    """The first ``n`` test photos of each class, spread over the classes (read in place, copied only here)."""
    shutil.rmtree(dest, ignore_errors=True)
    classes = sorted(p for p in (SHARED_DATA / "test").iterdir() if p.is_dir())
    count = 0
    for folder in classes:
        (dest / folder.name).mkdir(parents=True)
        for photo in sorted(folder.glob("*.jpg"))[: n // len(classes)]:
            shutil.copy2(photo, dest / folder.name / photo.name)
            count += 1
    return count


def copy_model(artifacts: Path | None, ref: str, dest: Path) -> str:
    """One version of a registry copied into a registry of its own at ``dest``, promoted there."""
    src = Registry(artifacts).resolve(ref)
    files = set(json.loads((src / METADATA_FILE).read_text()).get("files", {})) | {METADATA_FILE}
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest / "models" / src.name, ignore=lambda d, names: [
        n for n in names if Path(d) == src and n not in files])
    (dest / "current").write_text(src.name + "\n")
    return src.name


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_bytes() -> int:
    """What travels with every call: tracked files and untracked ones git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=PROJECT_ROOT, check=True,
                           capture_output=True).stdout.split(b"\0")
    return sum((PROJECT_ROOT / n.decode()).stat().st_size for n in names if n and (PROJECT_ROOT / n.decode()).is_file())


def pack(wheels: list[Path], first_room: int, room: int) -> tuple[list[list[Path]], dict]:
    """Wheels (large ones split into pieces) packed first-fit-decreasing into carry folders; the last folder (the
    run's own call, which also carries photos and the model) has ``first_room`` bytes, the others ``room``."""
    pieces_dir = GPU / "pieces"
    shutil.rmtree(pieces_dir, ignore_errors=True)
    pieces_dir.mkdir(parents=True)
    manifest: dict = {"wheels": []}
    items: list[Path] = []
    for w in wheels:
        entry = {"file": w.name, "sha256": sha256(w), "bytes": w.stat().st_size}
        if w.stat().st_size > PIECE:
            entry["pieces"] = split(w, PIECE, pieces_dir)
            items += [pieces_dir / p for p in entry["pieces"]]
        else:
            items.append(w)
        manifest["wheels"].append(entry)
    bins: list[list[Path]] = [[]]
    free = [first_room]
    for item in sorted(items, key=lambda p: p.stat().st_size, reverse=True):
        size = item.stat().st_size
        k = next((k for k, f in enumerate(free) if f >= size), None)
        if k is None:
            if size > room:
                sys.exit(f"{item.name} ({size} bytes) does not fit one call")
            bins.append([])
            free.append(room)
            k = len(bins) - 1
        bins[k].append(item)
        free[k] -= size
    return bins[1:] + bins[:1], manifest  # the run's call last


def write_carry(bins: list[list[Path]], manifest: dict) -> list[Path]:
    root = GPU / "carry"
    shutil.rmtree(root, ignore_errors=True)
    folders = []
    for n, items in enumerate(bins, 1):
        folder = root / str(n)
        folder.mkdir(parents=True)
        for item in items:
            shutil.copy2(item, folder / item.name)
        if n == len(bins):
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        sums = [f"{sha256(folder / i.name)}  {i.name}" for i in items]
        (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        folders.append(folder)
    return folders


def plan(folders: list[Path], tree: int) -> dict:
    """The device calls, in order, with what each carries and its measured size."""
    rel = lambda p: str(p.relative_to(PROJECT_ROOT))  # noqa: E731
    calls = []
    for n, folder in enumerate(folders, 1):
        last = n == len(folders)
        carry = [rel(folder), rel(GPU / "photos"), rel(GPU / "artifacts")] if last else [rel(folder)]
        size = tree + sum(folder_bytes(PROJECT_ROOT / c) for c in carry)
        calls.append({
            "call": n, "carry": carry, "bytes": size, "mib": round(size / 2**20, 1),
            "timeout_s": 570 if last else 90,
            "command": ("set -o pipefail; bash bench/gpu/run.sh " + rel(folder) + " 2>&1 | tee $OUT/run.log") if last
            else f"bash bench/gpu/stage.sh {rel(folder)}"})
        if size > CALL_LIMIT:
            sys.exit(f"call {n} would carry {size} bytes, over the {CALL_LIMIT} limit")
    return {"tree_bytes": tree, "call_limit_bytes": CALL_LIMIT, "calls": calls}


def plan_markdown(p: dict) -> str:
    lines = ["# The GPU run: device calls, back to back (the machine stays warm 30 s after each)", "",
             f"Working tree that travels with each call: {p['tree_bytes'] / 2**20:.1f} MiB; limit per call "
             f"{p['call_limit_bytes'] / 2**20:.0f} MiB.", ""]
    for c in p["calls"]:
        lines += [f"{c['call']}. `run` command=`{c['command']}` carry={json.dumps(c['carry'])} "
                  f"timeout_s={c['timeout_s']}  ({c['mib']} MiB)"]
    lines += ["", ("Make each call as soon as the previous one returns, looking only at its `rc` (0) and its "
                   "'staged N files' line: after 30 s idle the machine goes back and /tmp with it. If a staging call "
                   "fails (transfer), repeat it at once; if the machine went back, start again from call 1. The last "
                   "call's files come back under files_at: keep gpu-cuda.json as bench/results/gpu-h200.json. "
                   "Then `give_back`."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, default=None, help="the registry to take the model from")
    ap.add_argument("--model", default="current", help="current, a version, or a version folder")
    ap.add_argument("--photos", type=int, default=600, help="test photos to copy (spread over the classes)")
    ap.add_argument("--skip-download", action="store_true", help="reuse .gpu/wheels as it is")
    args = ap.parse_args(argv)
    GPU.mkdir(exist_ok=True)
    version = copy_model(args.artifacts, args.model, GPU / "artifacts")
    photos = copy_photos(args.photos, GPU / "photos")
    if args.skip_download:
        wheels = sorted((GPU / "wheels").glob("*.whl"))
    else:
        pins = {n: v for n, v in resolve(requirements()).items() if n not in MACHINE_HAS}
        wheels = download(pins, GPU / "wheels")
    tree = tree_bytes()
    run_room = CALL_BUDGET - tree - folder_bytes(GPU / "photos") - folder_bytes(GPU / "artifacts")
    bins, manifest = pack(wheels, max(run_room, 0), CALL_BUDGET - tree)
    p = plan(write_carry(bins, manifest), tree)
    p.update(model=version, photos=photos, wheels=[w.name for w in wheels],
             wheel_bytes=sum(w.stat().st_size for w in wheels))
    (GPU / "plan.json").write_text(json.dumps(p, indent=1) + "\n")
    (GPU / "PLAN.md").write_text(plan_markdown(p))
    print(plan_markdown(p))
    print(f"{len(wheels)} wheels ({p['wheel_bytes'] / 2**20:.1f} MiB), {photos} photos, model {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

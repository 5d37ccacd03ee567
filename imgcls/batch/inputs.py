"""The batch job's inputs: a folder tree, a glob or a CSV list of paths, as absolute paths."""
from __future__ import annotations

import csv
import glob
import os
from pathlib import Path

from imgcls.images import IMAGE_SUFFIXES

__all__ = ["BatchError", "find_inputs", "read_path_list"]
GLOB_CHARS = frozenset("*?[")


class BatchError(RuntimeError):
    """A problem with the job's arguments or its output file: reported in one line, exit status 2."""


# -- inputs -------------------------------------------------------------------------------------------------------

def find_inputs(spec: str) -> list[str]:
    """Absolute paths named by ``spec``: a folder (searched recursively for image extensions), a ``.csv`` list,
    a glob (every file it matches, images or not) or a single file. Duplicates are dropped, order is kept."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = _walk_images(path)
    elif path.suffix.lower() == ".csv" and path.is_file():
        found = read_path_list(path)
    elif GLOB_CHARS & set(spec):
        found = sorted(p for p in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p))
    elif path.is_file():
        found = [str(path)]
    else:
        raise BatchError(f"--input {spec!r} is not a folder, a .csv file, a file, nor a glob that matches anything")
    return list(dict.fromkeys(os.path.abspath(p) for p in found))


def _walk_images(root: Path) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found.extend(os.path.join(folder, f) for f in sorted(files) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return found


def read_path_list(csv_path: Path) -> list[str]:
    """Paths from the ``path`` column of a CSV file (or its first column); relative ones resolve against the CSV's
    folder. Without a ``path`` column, a first row whose first cell has no file extension and names no file is
    taken as a header."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    if not rows:
        return []
    base = csv_path.parent
    header = [cell.strip().lower() for cell in rows[0]]
    column = 0
    if "path" in header:
        column, rows = header.index("path"), rows[1:]
    elif not Path(rows[0][0].strip()).suffix and not (base / rows[0][0].strip()).exists():
        rows = rows[1:]
    cells = (r[column].strip() for r in rows if len(r) > column)
    return [str(base / os.path.expanduser(c)) for c in cells if c]

"""The README stays a user's guide: short, and naming every setting the service reads."""
from __future__ import annotations

import re

from tests.conftest import ROOT

README = ROOT / "README.md"
MAX_README_BYTES = 10 * 1024


def service_settings() -> set[str]:
    """The environment variables service/config.py reads (its one place for them)."""
    return set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', (ROOT / "service" / "config.py").read_text()))


def test_the_readme_is_under_10_kb() -> None:
    size = README.stat().st_size
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move details to docs/"


def test_the_readme_names_every_setting_the_service_reads() -> None:
    settings = service_settings()
    assert {"MODEL", "ARTIFACTS_DIR", "DEVICE"} <= settings  # the parse still finds them
    text = README.read_text()
    missing = sorted(s for s in settings if not re.search(rf"\b{s}\b", text))
    assert not missing, f"settings missing from the README's table: {missing}"


def test_the_readme_links_only_to_files_that_exist() -> None:
    links = re.findall(r"\]\(((?!https?:|#)[^)#\s]+)", README.read_text())
    assert links, "the README links to docs/"
    broken = [link for link in links if not (ROOT / link).exists()]
    assert not broken, f"broken links in README.md: {broken}"

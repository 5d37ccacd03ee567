"""deploy/alerts.yml: Prometheus's own checker and unit tests (``promtool``, Debian's ``prometheus`` package), and
every metric the rules read is one the service exports."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from imgcls.registry import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
PROMTOOL = shutil.which("promtool")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    if PROMTOOL is None:
        (pytest.fail if os.environ.get("REQUIRE_PROMETHEUS") else pytest.skip)(
            "no promtool: apt-get install prometheus (.ci/run does)")
    return subprocess.run([PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)


def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    check = _promtool("check", "rules", "alerts.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    test = _promtool("test", "rules", "alerts_test.yml")
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_the_rules_read_metrics_the_service_exports() -> None:
    from prometheus_client import Counter, Gauge, Histogram

    from service import metrics

    exported = {family.name for m in vars(metrics).values() if isinstance(m, (Counter, Gauge, Histogram))
                for family in m.describe()}
    used = set(re.findall(r"\b(imgcls_[a-z_]+?)(?:_total|_count|_bucket)?\b", (DEPLOY / "alerts.yml").read_text()))
    assert used and used <= exported, used - exported
    assert "alerts.yml" in (DEPLOY / "prometheus.yml").read_text()

"""The alerting and recording rules shipped in prometheus/: promtool checks them, and runs
their unit tests (prometheus/tests/*.yml: alerts that fire, and alerts that must not)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "prometheus"

pytestmark = pytest.mark.needs_binary("promtool")


def promtool(*args: str, cwd: Path = RULES) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("promtool"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_the_rules_file_is_valid():
    checked = promtool("check", "rules", "tunnelrouter-rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout


@pytest.mark.parametrize("unit", sorted(path.name for path in (RULES / "tests").glob("*.yml")))
def test_the_rules_unit_tests_pass(unit):
    tested = promtool("test", "rules", unit, cwd=RULES / "tests")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_fires_it():
    groups = yaml.safe_load((RULES / "tunnelrouter-rules.yml").read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    fired = {check["alertname"] for path in (RULES / "tests").glob("*.yml")
             for test in yaml.safe_load(path.read_text())["tests"]
             for check in test.get("alert_rule_test", []) if check["exp_alerts"]}
    assert len(alerts) == 7 and fired == alerts

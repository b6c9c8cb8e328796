"""The shipped Prometheus rules, checked and unit-tested by the real ``promtool``
(``check rules``, ``test rules`` with tests/rules/greentrack.rules.test.yml), loaded by the
shipped config and the compose file, and every rule about a metric the exporter documents."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from greentrack.exporters._collector import __doc__ as collector_doc
from tests.servers import SHIPPED_PROMETHEUS_YML, promtool

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "grafana" / "rules" / "greentrack.rules.yml"
RULE_TESTS = REPO / "tests" / "rules" / "greentrack.rules.test.yml"
ALERTS = {"GreentrackSamplerStale", "GreentrackDeviceDown", "GreentrackPushFailures",
          "GreentrackEnergyRateTooHigh", "GreentrackEnergyRateZero", "GreentrackPushedRunSilent",
          "GreentrackBudgetReached", "GreentrackBudgetForecastPassed"}


def rules() -> list[dict[str, object]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules() -> None:
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules())} rules found" in check.stdout


def test_promtool_unit_tests_pass_and_cover_every_alert() -> None:
    run = promtool("test", "rules", str(RULE_TESTS))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout
    assert {r["alert"] for r in rules() if "alert" in r} == ALERTS
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    assert fired == ALERTS, "every alert has a test where it fires"
    checked = {re.match(r"[\w:]+", e["expr"]).group(0)  # type: ignore[union-attr]
               for t in tests for e in t.get("promql_expr_test", [])}
    checked |= {n for t in tests for e in t.get("promql_expr_test", [])
                for n in re.findall(r"[\w]+:[\w]+:\w+", e["expr"])}
    assert checked >= {r["record"] for r in rules() if "record" in r}


@pytest.mark.parametrize("change", [("> 30", "> 300"), ("== 0\n        for: 2m", "== 1\n        for: 2m"),
                                    ("> 2000", "> 4000"), ('{source="measured"}', ""),
                                    ("(greentrack_run_running) == 1", "(greentrack_run_running) >= 0"),
                                    ("sum by (job, run, host) (greentrack_power_watts)",
                                     "max by (job, run, host) (greentrack_power_watts)")])
def test_the_unit_tests_fail_on_a_wrong_rule(tmp_path: Path, change: tuple[str, str]) -> None:
    text = RULES.read_text()
    assert change[0] in text
    (tmp_path / "grafana" / "rules").mkdir(parents=True)
    (tmp_path / "grafana" / "rules" / RULES.name).write_text(text.replace(change[0], change[1], 1))
    (tmp_path / "tests" / "rules").mkdir(parents=True)
    shutil.copy(RULE_TESTS, tmp_path / "tests" / "rules" / RULE_TESTS.name)
    run = promtool("test", "rules", str(tmp_path / "tests" / "rules" / RULE_TESTS.name))
    assert run.returncode != 0, f"a rule changed by {change} still passes its unit tests"


def test_rules_use_exported_metrics_and_are_loaded_by_the_shipped_config() -> None:
    for rule in rules():
        for metric in re.findall(r"(?<![:\w])greentrack_\w+", str(rule["expr"])):
            family = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert f"``{family}``" in (collector_doc or ""), family
    config = yaml.safe_load(SHIPPED_PROMETHEUS_YML.read_text())
    assert config["rule_files"] == ["rules/*.yml"]
    check = promtool("check", "config", str(SHIPPED_PROMETHEUS_YML))
    assert check.returncode == 0 and "SUCCESS: 1 rule files found" in check.stdout, check.stdout
    compose = yaml.safe_load((REPO / "grafana" / "docker-compose.yml").read_text())
    assert "./rules:/etc/prometheus/rules:ro" in compose["services"]["prometheus"]["volumes"]

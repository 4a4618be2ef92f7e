"""Write deploy/k8s/prometheusrule.yaml from deploy/prometheus/alerts.yaml.

alerts.yaml is the source (promtool checks it); the PrometheusRule carries the same groups for
the Prometheus Operator. tests/test_deploy.py fails when the two differ. Run from anywhere:

    python deploy/prometheus/sync_prometheusrule.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "alerts.yaml"
TARGET = HERE.parent / "k8s" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by deploy/prometheus/sync_prometheusrule.py:
# edit alerts.yaml, then run the script. tests/test_deploy.py checks that the groups are equal.
# Needs the Prometheus Operator CRDs (monitoring.coreos.com/v1). Your Prometheus may select rules
# by label (ruleSelector, e.g. release: <name>): add that label in an overlay.
"""


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings as literal blocks, long ones folded; keys in source order."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else (">" if len(value) > 80 else None)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "partner-proxy", "labels": {"app.kubernetes.io/name": "partner-proxy"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def main() -> int:
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The chart's Grafana dashboard: it renders as a ConfigMap and queries only metrics the inference app exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from kubeforge_trainer.serve.metrics import METRICS, prometheus_name

CHART = Path(__file__).resolve().parents[3] / "charts" / "kubeforge"
DASHBOARD = json.loads((CHART / "dashboards" / "serving.json").read_text())


def exported_series() -> set[str]:
    """Every series name Prometheus sees from the app (histograms as _bucket, _sum and _count)."""
    names = set()
    for name, (kind, _, _) in METRICS.items():
        base = prometheus_name(name)
        names |= {base + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {base}
    return names


def test_every_queried_metric_is_exported_and_the_engine_is_shown() -> None:
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"ray_kubeforge_inference_[a-z_]+", e)}
    assert queried <= exported_series(), queried - exported_series()
    for shown in ("time_to_first_token", "inter_token_latency", "tokens_generated", "prompt_tokens"):
        assert any(shown in m for m in queried), shown
    for shown in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert any(shown in m for m in queried), shown
    assert any("adapter" in e for e in exprs)  # per adapter


def test_the_chart_renders_the_dashboard_configmap_only_when_enabled() -> None:
    import helm_python

    with helm_python.Chart.load(str(CHART)) as chart:
        off = chart.render(None, name="kf", namespace="ops")
        on = chart.render({"metrics": {"grafanaDashboard": {"enabled": True}}}, name="kf", namespace="ops")
    path = "kubeforge/templates/grafana-dashboard.yaml"
    assert not off.get(path, "").strip()
    configmap = yaml.safe_load(on[path])
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["kubeforge-serving.json"]) == DASHBOARD

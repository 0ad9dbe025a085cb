"""Value sets that switch on every documented toggle of charts/kubeforge/values.yaml, shared by the chart tests."""

from __future__ import annotations

from typing import Any

DIGEST = "sha256:" + "ab" * 32

TOGGLES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "no-peering-object": {"peering": {"enabled": False}},
    "no-peering-object-namespaced": {"peering": {"enabled": False}, "watchNamespaces": ["team-a"]},
    "service-monitor": {
        "metrics": {
            "service": {"annotations": {"example.com/scrape": "true"}},
            "serviceMonitor": {
                "enabled": True,
                "labels": {"release": "prometheus"},
                "interval": "15s",
                "scrapeTimeout": "5s",
                "honorLabels": True,
                "relabelings": [{"action": "replace", "targetLabel": "team", "replacement": "ml"}],
                "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "python_gc_.*"}],
            },
        }
    },
    "no-metrics-service": {"metrics": {"service": {"enabled": False}}},
    "grafana-dashboard": {"metrics": {"grafanaDashboard": {"enabled": True, "labels": {"team": "ml"}}}},
    "no-rbac": {"rbac": {"create": False}},
    "no-aggregated-roles": {"rbac": {"aggregateToDefaultRoles": False}},
    "existing-service-account": {"serviceAccount": {"create": False, "name": "platform-operator"}},
    "service-account-annotations": {
        "serviceAccount": {"name": "kubeforge-operator", "annotations": {"example.com/owner": "ml-platform"}}
    },
    "workload-namespaces": {
        "workload": {
            "namespaces": ["runs-a", "runs-b"],
            "serviceAccount": {
                "name": "trainer",
                "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/kubeforge"},
            },
        }
    },
    "namespaced-workload-namespaces": {"watchNamespaces": ["team-a"], "workload": {"namespaces": ["team-a-runs"]}},
    "no-workload-identity": {"workload": {"serviceAccount": {"create": False}}},
    "kuberay": {"kuberay": {"enabled": True, "image": {"tag": "v1.7.1"}}},
    "network-policy": {"networkPolicy": {"enabled": True}, "workload": {"namespaces": ["runs-a", "runs-b"]}},
    "network-policy-serve-from": {
        "networkPolicy": {
            "enabled": True,
            "serveFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
            "prometheus": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        }
    },
    "images-by-digest": {
        "image": {"digest": DIGEST, "pullPolicy": "Always"},
        "trainer": {"image": {"digest": DIGEST}, "rayVersion": "2.60.0"},
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "images-by-tag": {
        "image": {"repository": "registry.example.com/ml/kubeforge-operator", "tag": "0.1.0-rc.1"},
        "trainer": {"image": {"repository": "registry.example.com/ml/kubeforge-trainer", "tag": "0.1.0-cpu"}},
    },
    "operator-settings": {
        "nameOverride": "forge",
        "operator": {
            "logLevel": "DEBUG",
            "requeueSeconds": 2.5,
            "servePort": 9000,
            "metricsPort": 9090,
            "healthPort": 9091,
            "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"}],
        },
    },
    "scheduling": {
        "fullnameOverride": "kubeforge-operator",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/team": "ml"},
        "podLabels": {"team": "ml"},
        "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "livenessProbe": {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 6},
    },
}

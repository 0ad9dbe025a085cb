"""Validate generated children against the real KubeRay CRD schemas (and built-in kinds with kubernetes-validate)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
KUBERNETES_VERSION = "1.30"


def load_validators(crds_dir: Path) -> dict[str, jsonschema.protocols.Validator]:
    """{kind: validator} from the openAPIV3Schema of the served ray.io/v1 version of each CRD."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    validators = {}
    for kind, filename in CRD_FILES.items():
        path = crds_dir / filename
        if not path.is_file():
            raise FileNotFoundError(f"KubeRay CRD {path} not found (set KUBERAY_CRDS_DIR)")
        crd = yaml.load(path.read_text(), Loader=loader)
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = version["schema"]["openAPIV3Schema"]
        validators[kind] = jsonschema.validators.validator_for(schema)(schema)
    return validators


def schema_errors(validators: Mapping[str, Any], obj: Mapping[str, Any]) -> list[str]:
    """Every violation of the KubeRay schema in a RayJob or RayService, as 'path: message'."""
    validator = validators[obj["kind"]]
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def pod_templates(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod templates inside a RayJob or RayService."""
    spec = obj.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or {}
    templates = [cluster.get("headGroupSpec", {}).get("template")]
    templates += [group.get("template") for group in cluster.get("workerGroupSpecs") or []]
    return [t for t in templates if t]


def pod_template_errors(obj: Mapping[str, Any]) -> list[str]:
    """Violations of the Kubernetes PodTemplate schema (kubernetes-validate, strict) in its pod templates."""
    import kubernetes_validate

    errors = []
    for index, template in enumerate(pod_templates(obj)):
        document = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{index}"}, "template": template}
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"template {index}: {exc}")
    return errors

"""Names shared by the operator, the builders, the workloads and the chart: the one place each is spelled."""

GROUP = "kubeforge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "kubeforge"

# kind -> (plural, singular, short name)
KINDS: dict[str, tuple[str, str, str]] = {
    "DataPipeline": ("datapipelines", "datapipeline", "dp"),
    "TrainingJob": ("trainingjobs", "trainingjob", "tj"),
    "ModelDeployment": ("modeldeployments", "modeldeployment", "md"),
}

RAY_GROUP = "ray.io"
RAY_VERSION = "v1"
RAY_API_VERSION = f"{RAY_GROUP}/{RAY_VERSION}"
# kind -> the plural of its children's resource type (ray.io/v1).
CHILD_PLURALS = {"DataPipeline": "rayjobs", "TrainingJob": "rayjobs", "ModelDeployment": "rayservices"}

# Labels and annotations put on every child object.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "kubeforge"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"


def owner_label(kind: str) -> str:
    """The label naming the kubeforge resource that owns a child, e.g. `kubeforge.dev/trainingjob`."""
    return f"{GROUP}/{kind.lower()}"


ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
ANNOTATION_ATTEMPT = f"{GROUP}/attempt"
FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_LOCAL_SOURCE = f"{GROUP}/local-source"  # `kubeforge run`: the manifest file a stored resource came from

# Environment variables through which a workload learns which resource it reports progress to.
ENV_RESOURCE_KIND = "KUBEFORGE_RESOURCE_KIND"
ENV_RESOURCE_NAME = "KUBEFORGE_RESOURCE_NAME"
ENV_RESOURCE_NAMESPACE = "KUBEFORGE_RESOURCE_NAMESPACE"
ENV_STATUS_DIR = "KUBEFORGE_STATUS_DIR"

# A DataPipeline's spec.source.pvc is mounted read-only at PVC_MOUNT_ROOT/<claimName> in every Ray pod; the data step
# reads spec.source.pvc.path below it. ENV_PVC_ROOT overrides the root where no such mount exists (local runs, tests).
PVC_MOUNT_ROOT = "/mnt/kubeforge/pvc"
ENV_PVC_ROOT = "KUBEFORGE_PVC_ROOT"


# Ray Serve's own variables for direct ingress (the Serve controller and the replicas read them when they start).
# The inference app's accepted API keys, one per line (from the Secret named in ModelDeployment spec.auth).
ENV_SERVE_API_KEYS = "KUBEFORGE_API_KEYS"
SERVE_PLAYGROUND_PATH = "/playground"  # where a ModelDeployment with spec.playground serves its chat page
ENV_SERVE_DIRECT_INGRESS = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
ENV_SERVE_DIRECT_MIN_PORT = "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"
ENV_SERVE_DIRECT_MAX_PORT = "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"
ENV_SERVE_DIRECT_MIN_DRAINING_PERIOD = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


def direct_ingress_env(first_port: int, last_port: int) -> dict[str, str]:
    """Environment of every Ray process for Ray Serve direct ingress: ingress replicas serve HTTP themselves on a
    port in [first_port, last_port]."""
    return {
        ENV_SERVE_DIRECT_INGRESS: "1",
        ENV_SERVE_DIRECT_MIN_PORT: str(first_port),
        ENV_SERVE_DIRECT_MAX_PORT: str(last_port),
    }

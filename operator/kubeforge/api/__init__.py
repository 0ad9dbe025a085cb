"""The kubeforge.dev/v1alpha1 API: one typed model per kind; the CRDs in crds/ are generated from them."""

from .common import ApiModel, Condition
from .datapipeline import DataPipeline, DataPipelineSpec, DataPipelineStatus
from .modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from .trainingjob import TrainingJob, TrainingJobSpec, TrainingJobStatus

RESOURCE_MODELS: dict[str, type[ApiModel]] = {
    "DataPipeline": DataPipeline,
    "TrainingJob": TrainingJob,
    "ModelDeployment": ModelDeployment,
}

__all__ = [
    "RESOURCE_MODELS",
    "ApiModel",
    "Condition",
    "DataPipeline",
    "DataPipelineSpec",
    "DataPipelineStatus",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
]

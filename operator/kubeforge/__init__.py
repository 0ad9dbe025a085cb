"""kubeforge: data pipelines, DeepSpeed training and Ray Serve inference as Kubernetes custom resources."""

__version__ = "0.1.0"

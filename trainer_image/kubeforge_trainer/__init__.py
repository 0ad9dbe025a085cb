"""Code that runs inside the Ray containers: the data step, the training step and the inference app."""

__version__ = "0.1.0"

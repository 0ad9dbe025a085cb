"""The one error type of the data step: a one-line message naming the resource and the field at fault."""

from __future__ import annotations

from kubeforge.failures import exception_chain


class DataPipelineError(ValueError):
    """Bad input or configuration; str(error) is one line meant for the user (no traceback needed)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def find_pipeline_error(exc: BaseException) -> DataPipelineError | None:
    """The DataPipelineError behind exc, unwrapping Ray task errors and exception chains; None if there is none."""
    for current in exception_chain(exc):
        # A RayTaskError keeps the original exception in .cause and may itself subclass it, with a traceback in its
        # message: the original is the one to report.
        if isinstance(current, DataPipelineError) and not isinstance(getattr(current, "cause", None), BaseException):
            return current
    return None

"""The one error type of the data step: a one-line message naming the resource and the field at fault."""

from __future__ import annotations


class DataPipelineError(ValueError):
    """Bad input or configuration; str(error) is one line meant for the user (no traceback needed)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def find_pipeline_error(exc: BaseException) -> DataPipelineError | None:
    """The DataPipelineError behind exc, unwrapping Ray task and Ray Data wrappers; None if there is none."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # RayTaskError keeps the original exception in .cause (and may itself subclass it, with a traceback in its
        # message); Ray Data chains UserCodeException with __cause__.
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException):
            stack.append(cause)
            continue
        if isinstance(current, DataPipelineError):
            return current
        stack.extend([current.__cause__, current.__context__])
    # Ray Data keeps only the text of an exception raised in a UDF: find the error's line in it.
    marker = f"{DataPipelineError.__module__}.{DataPipelineError.__name__}: "
    for line in str(exc).splitlines():
        if marker in line:
            return DataPipelineError(line.split(marker, 1)[1])
    return None

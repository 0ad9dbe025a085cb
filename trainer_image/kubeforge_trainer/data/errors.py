"""The one error type of the data step: a one-line message naming the resource and the field at fault."""

from __future__ import annotations


class DataPipelineError(ValueError):
    """Bad input or configuration; str(error) is one line meant for the user (no traceback needed)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def find_pipeline_error(exc: BaseException) -> DataPipelineError | None:
    """The DataPipelineError behind exc, unwrapping Ray task errors and exception chains; None if there is none."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # RayTaskError keeps the original exception in .cause (and may itself subclass it, with a traceback in its
        # message).
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException):
            stack.append(cause)
            continue
        if isinstance(current, DataPipelineError):
            return current
        stack.extend([current.__cause__, current.__context__])
    return None

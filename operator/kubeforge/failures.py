"""Which workload failures a retry can heal (pure): one classification for the local runner, the operator's
failurePolicy path and the trainer's exit message.

Permanent: the run would fail the same way again — an invalid spec, a shape mismatch, a missing data or model file.
Transient: the world got in the way — a lost worker or node, an OOM kill, a storage or network hiccup. Anything
unrecognised counts as transient, as it did before this classification existed (a needless retry costs time; a
skipped one loses a run that would have healed).

The workloads end a failed step with one line, `kubeforge_trainer: permanent error: <resource>: <field>: <problem>`
for permanent causes (see `exit_message`), which the RayJob's status message carries to the operator; the words
below are the fallback for failures that never reached that line (a crashed process, a Ray error).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

PERMANENT_MARKER = "permanent error: "
"""Put before the one-line message of a failure no retry can heal (in the workload's last line)."""

TRAINER_PREFIX = "kubeforge_trainer: "
"""How the workloads' entry point starts its last line on failure."""

_PERMANENT = re.compile(
    r"permanent error: |size mismatch|shape mismatch|shapes? .* (cannot|can't|don't) |mat\d? and mat\d? shapes|"
    r"SpecError|DataPipelineError|ValidationError|No such file or directory|FileNotFoundError|does not exist|"
    r"is missing|is not set|not a valid|NoSuchKey|NoSuchBucket",
)
_TRANSIENT = re.compile(
    r"ActorDiedError|RayActorError|WorkerCrashedError|NodeDiedError|ActorUnavailableError|OutOfMemoryError|"
    r"out of memory|OOM|SIGKILL|killed|node .*(died|dead|lost|removed|preempted)|worker .*(died|lost|exited)|"
    r"ConnectionError|Connection (reset|refused|aborted)|timed out|TimeoutError|Temporar|Unavailable|SlowDown|"
    r"Throttl|\b50[234]\b",
    re.IGNORECASE,
)

# Exception types that mean bad input: the workloads raise ValueError subclasses (SpecError, DataPipelineError)
# naming the field; a missing file stays missing.
PERMANENT_TYPES: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError)


def is_permanent_text(text: str) -> bool:
    """Whether a failure message names a cause no retry can heal (the marker, or a known permanent cause that no
    transient cause accompanies, such as a worker killed while loading)."""
    if PERMANENT_MARKER in text:
        return True
    return bool(_PERMANENT.search(text)) and not _TRANSIENT.search(text)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """exc and everything behind it, depth first: Ray's task errors (.cause, the original exception, first), then
    __cause__ and __context__."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        cause = getattr(current, "cause", None)
        behind = (current.__context__, current.__cause__, cause)  # popped in reverse: .cause first
        stack.extend(c for c in behind if isinstance(c, BaseException))


def is_permanent(exc: BaseException) -> bool:
    """Whether a failed step's exception is one no retry can heal: bad input anywhere in its chain, or a permanent
    cause in its messages (Ray wraps a worker's error in its own types, with the text preserved)."""
    chain = list(exception_chain(exc))
    if any(isinstance(e, PERMANENT_TYPES) for e in chain):
        return True
    return is_permanent_text("\n".join(str(e) for e in chain))


def exit_message(exc: BaseException) -> str:
    """The entry point's last line for a failed step: marked when permanent, so the operator does not retry it."""
    text = " ".join(str(exc).split())
    return f"{TRAINER_PREFIX}{PERMANENT_MARKER if is_permanent(exc) else ''}{text}"


def cause_line(detail: str) -> str:
    """The workload's own last line in a RayJob's status message (Ray appends the job's last log lines), without
    the entry point's prefix; the whole detail, on one line, when there is none."""
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(TRAINER_PREFIX)]
    if ours:
        return ours[-1].removeprefix(TRAINER_PREFIX)
    return " ".join(lines)

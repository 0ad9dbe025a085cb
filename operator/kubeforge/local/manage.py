"""`kubeforge logs KIND/NAME [-f]` and `kubeforge delete KIND/NAME [--yes]`: the local state of one resource.

A step's log is `<state dir>/logs/<run id>/<Kind>-<name>.log` (everything logged while it ran, its step lines and,
when it failed, the traceback); `logs` shows the newest one. `delete` removes the resource's status, stored object
and logs, and the outputs it owns: a DataPipeline's output.uri, a TrainingJob's checkpoint.uri and output.uri.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from .resources import ResourceStore
from .status import StatusStore

TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Suspended", "Ready", "Degraded"})

# The spec fields naming the outputs a resource writes (and owns), per kind, as wire-form paths.
OWNED_OUTPUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "DataPipeline": (("spec", "output", "uri"),),
    "TrainingJob": (("spec", "checkpoint", "uri"), ("spec", "output", "uri")),
    "ModelDeployment": (),
}


def step_log_path(log_dir: Path, kind: str, name: str) -> Path:
    """The log file of kind/name in one run's log directory."""
    return Path(log_dir) / f"{kind}-{name}.log"


def step_logs(state_dir: Path, kind: str, name: str) -> list[Path]:
    """Every run's log file of kind/name, oldest first (run ids sort by time)."""
    return sorted((Path(state_dir) / "logs").glob(f"*/{kind}-{name}.log"))


def owned_outputs(obj: dict) -> list[str]:
    """The output locations a stored resource writes, as given (absolute after `kubeforge run`)."""
    found = []
    for path in OWNED_OUTPUTS.get(obj.get("kind", ""), ()):
        node: object = obj
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, str) and node and node not in found:
            found.append(node)
    return found


def follow_lines(path: Path, done: Callable[[], bool], poll: float = 0.5) -> Iterator[str]:
    """The file's lines, then new ones as they are written, until done() holds and nothing more came."""
    with path.open() as f:
        while True:
            line = f.readline()
            if line:
                yield line
                continue
            if done():
                rest = f.read()
                if rest:
                    yield rest
                return
            time.sleep(poll)


def print_logs(state_dir: Path, kind: str, name: str, follow: bool, out: TextIO | None = None) -> int:
    """Print the newest log of kind/name (-f: keep printing until its step stops running); 1 when there is none."""
    out = out or sys.stdout
    logs = step_logs(state_dir, kind, name)
    if not logs:
        print(f"kubeforge logs: no log of {kind}/{name} in {state_dir}; run `kubeforge run DIR` first", file=sys.stderr)
        return 1
    statuses = StatusStore(state_dir)

    def finished() -> bool:
        return not follow or statuses.get(kind, name).get("phase") in TERMINAL_PHASES

    for line in follow_lines(logs[-1], finished):
        out.write(line)
        out.flush()
    return 0


def delete_resource(
    state_dir: Path, kind: str, name: str, yes: bool, ask: Callable[[str], str] = input, out: TextIO | None = None
) -> int:
    """Delete kind/name's local state, logs and the outputs it owns, after asking (unless yes)."""
    out = out or sys.stdout
    resources, statuses = ResourceStore(state_dir), StatusStore(state_dir)
    obj = resources.get(kind, name)
    status_path = statuses.path(kind, name)
    if obj is None and not status_path.exists():
        print(f"kubeforge delete: {kind}/{name} not found in {state_dir}", file=sys.stderr)
        return 1
    outputs = [uri for uri in owned_outputs(obj or {}) if _exists(uri)]
    logs = step_logs(state_dir, kind, name)
    what = ["its status"] + [f"output {uri}" for uri in outputs] + ([f"{len(logs)} log file(s)"] if logs else [])
    if not yes:
        try:
            answer = ask(f"delete {kind}/{name}: {', '.join(what)}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("kubeforge delete: nothing deleted", file=sys.stderr)
            return 1
    for uri in outputs:
        from kubeforge_trainer import storage

        fs, path = storage.resolve(uri)
        fs.delete_dir(path)
    for path in [*logs, status_path, resources.path(kind, name)]:
        path.unlink(missing_ok=True)
    print(f"deleted {kind}/{name}: {', '.join(what)}", file=out)
    return 0


def _exists(uri: str) -> bool:
    """Whether a directory exists at a local path or object-store URI (imported here: `logs` needs no pyarrow)."""
    import pyarrow.fs as pafs
    from kubeforge_trainer import storage

    fs, path = storage.resolve(uri)
    try:
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except OSError:
        return False

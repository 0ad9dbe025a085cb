"""The `kubeforge` command line: one sub-command per verb, each a small function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CRD_DIRS = (REPO_ROOT / "crds", REPO_ROOT / "charts" / "kubeforge" / "crds")

Command = Callable[[argparse.Namespace], int]


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate manifests as the API server and the operator would; one line per problem; exit 1 when any."""
    from .validate import validate_paths

    report = validate_paths(args.paths, strict=args.strict)
    if args.output == "json":
        doc = {
            "ok": report.ok,
            "valid": [{"source": m.source, "resource": f"{m.kind}/{m.name}"} for m in report.manifests],
            "problems": [p.to_json() for p in report.problems],
            "skipped": [{"source": source, "resource": label} for source, label in report.skipped],
        }
        print(json.dumps(doc, indent=2))
        return 0 if report.ok else 1
    for problem in report.problems:
        print(problem, file=sys.stderr)
    if not args.quiet:
        for manifest in report.manifests:
            print(f"{manifest.source}: {manifest.kind}/{manifest.name}: valid")
        if report.skipped:
            print(f"skipped {len(report.skipped)} document(s) of other kinds (--strict makes them errors)")
    if report.problems:
        print(f"{len(report.problems)} problem(s) found", file=sys.stderr)
        return 1
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    """Generate the CRDs from the API models, or (--check) fail when the committed ones are stale."""
    from .api.crdgen import stale_files, write_crds

    dirs = [Path(d) for d in args.output] if args.output else [d for d in DEFAULT_CRD_DIRS if d.parent.exists()]
    if args.check:
        stale = [s for d in dirs for s in stale_files(d)]
        for path in stale:
            print(f"{path}: stale; run `kubeforge crds` to regenerate", file=sys.stderr)
        return 1 if stale else 0
    for d in dirs:
        for path in write_crds(d):
            print(f"wrote {path}")
    return 0


TRAINER_PACKAGES = ("ray", "torch", "deepspeed", "pyarrow", "transformers")
"""Packages of the `trainer` extra that `kubeforge run` needs (the `operator` extra has none of them)."""


def missing_trainer_packages() -> list[str]:
    """The TRAINER_PACKAGES that are not installed (found without importing them)."""
    import importlib.util

    return [name for name in TRAINER_PACKAGES if importlib.util.find_spec(name) is None]


def cmd_run(args: argparse.Namespace) -> int:
    """Run manifests end to end on this machine (local Ray): data, training, serving, then a report."""
    missing = missing_trainer_packages()
    if missing:
        print(
            f"kubeforge run: needs the trainer's packages ({', '.join(missing)} not installed); "
            "install them with: pip install 'kubeforge[trainer]'",
            file=sys.stderr,
        )
        return 2
    from .local.runner import RunOptions, run

    options = RunOptions(
        paths=args.paths,
        state_dir=Path(args.state_dir),
        serve=args.serve,
        port=args.port,
        metrics_port=args.metrics_port,
        prompt=args.prompt,
        plain=args.plain,
        verbose=args.verbose,
        num_cpus=args.num_cpus,
    )
    return run(options)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status of locally run resources, like `kubectl get kubeforge`."""
    from .local.status_command import print_status

    return print_status(Path(args.state_dir), args.names, args.output)


def _selected(verb: str, text: str) -> tuple[str, str] | None:
    """(Kind, name) of a KIND/NAME argument, or None after printing a one-line error."""
    from .constants import KINDS
    from .local.status_command import parse_selector

    parsed = parse_selector(text)
    if parsed is None or parsed[0] is None:
        print(f"kubeforge {verb}: {text}: expected KIND/NAME with KIND one of {', '.join(KINDS)}", file=sys.stderr)
        return None
    return parsed[0], parsed[1]


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the log of a resource's newest local run (-f: follow it while the step runs)."""
    from .local.manage import print_logs

    selected = _selected("logs", args.resource)
    return 1 if selected is None else print_logs(Path(args.state_dir), *selected, follow=args.follow)


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a resource's local state, logs and the outputs it owns (asks first unless --yes)."""
    from .local.manage import delete_resource

    selected = _selected("delete", args.resource)
    return 1 if selected is None else delete_resource(Path(args.state_dir), *selected, yes=args.yes)


def cmd_operator(args: argparse.Namespace) -> int:
    """Run the kopf operator in this process (settings from the KUBEFORGE_* environment) until stopped."""
    from .config import OperatorConfig

    if args.all_namespaces and args.namespace:
        print("kubeforge operator: --namespace and --all-namespaces exclude each other", file=sys.stderr)
        return 2
    try:
        config = OperatorConfig.from_env().with_namespaces(args.namespace, args.all_namespaces)
        from .controller import run
    except ValueError as exc:
        print(f"kubeforge operator: {exc}", file=sys.stderr)
        return 2
    run(config)
    return 0


def build_parser(
    commands: dict[str, tuple[Command, str, Callable[[argparse.ArgumentParser], None]]],
) -> argparse.ArgumentParser:
    """The argument parser for the given {name: (function, help, add_arguments)} commands."""
    parser = argparse.ArgumentParser(
        prog="kubeforge",
        description="Data, training and serving on Kubernetes and Ray.",
    )
    parser.add_argument("--version", action="version", version=f"kubeforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, help_text, add_arguments) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(func=func)
    return parser


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="manifest files or directories (searched recursively)")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    p.add_argument(
        "--strict", action="store_true", help="documents of other kinds are errors (default: skipped and counted)"
    )
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text (default) or json")


def _crds_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the generated CRDs differ from the files",
    )
    p.add_argument(
        "--output",
        "-o",
        action="append",
        help="directory to write (default: crds/ and the chart's crds/)",
    )


def _run_args(p: argparse.ArgumentParser) -> None:
    from .local import DEFAULT_PROMPT, DEFAULT_STATE_DIR

    p.add_argument("paths", nargs="+", help="manifest files or directories (searched recursively)")
    p.add_argument("--serve", action="store_true", help="keep the ModelDeployments serving until Ctrl-C")
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the endpoint (default 8000)")
    p.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus metrics port of Ray (default: a free one)"
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of the sample request to the served model")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="status, logs and reports (default .kubeforge)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--plain", action="store_true", help="plain progress lines instead of bars")
    p.add_argument("-v", "--verbose", action="store_true", help="also show Ray's own logs and the workers' output")


def _status_args(p: argparse.ArgumentParser) -> None:
    from .local import DEFAULT_STATE_DIR

    p.add_argument("names", nargs="*", help="NAME or KIND/NAME to show (default: all)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="where `kubeforge run` keeps state")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="table (default) or json")


def _logs_args(p: argparse.ArgumentParser) -> None:
    from .local import DEFAULT_STATE_DIR

    p.add_argument("resource", help="KIND/NAME, e.g. trainingjob/gpt or tj/gpt")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the step stops running")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="where `kubeforge run` keeps state")


def _delete_args(p: argparse.ArgumentParser) -> None:
    from .local import DEFAULT_STATE_DIR

    p.add_argument("resource", help="KIND/NAME, e.g. trainingjob/gpt or tj/gpt")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="where `kubeforge run` keeps state")


def _operator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        metavar="NS",
        help="watch this namespace (repeatable; a kopf glob such as team-* also works); "
        "overrides KUBEFORGE_WATCH_NAMESPACES",
    )
    p.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch the whole cluster, whatever KUBEFORGE_WATCH_NAMESPACES says",
    )
    p.epilog = "Other settings come from KUBEFORGE_* environment variables (see kubeforge.config)."


COMMANDS: dict[str, tuple[Command, str, Callable[[argparse.ArgumentParser], None]]] = {
    "validate": (
        cmd_validate,
        "validate kubeforge manifests offline, as the API server and the operator would",
        _validate_args,
    ),
    "crds": (
        cmd_crds,
        "generate the CustomResourceDefinitions from the API types",
        _crds_args,
    ),
    "run": (cmd_run, "run manifests end to end on this machine, on a local Ray", _run_args),
    "status": (cmd_status, "show the status of resources run locally", _status_args),
    "logs": (cmd_logs, "show the log of a resource run locally (-f follows it)", _logs_args),
    "delete": (cmd_delete, "delete a locally run resource: state, logs, outputs and checkpoints", _delete_args),
    "operator": (cmd_operator, "run the Kubernetes operator (kopf) in this process", _operator_args),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kubeforge` command."""
    args = build_parser(COMMANDS).parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`kubeforge status -o json | head`): it has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

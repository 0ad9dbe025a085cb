"""`kubeforge validate`: good manifests pass; every kind of bad input gives precise lines, exit 1, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kubeforge.cli import main

REPO_ROOT = Path(__file__).resolve().parents[3]
HEAD = "apiVersion: kubeforge.dev/v1alpha1\n"
TJ_SPEC = "spec:\n  dataRef: {name: d}\n  training: {maxSteps: 10}\n  checkpoint: {uri: /tmp/c}\n"

# name -> (file bytes, text every expected line contains, a fragment of the expected message)
BAD: dict[str, tuple[bytes, str, str]] = {
    "malformed-yaml": (b"kind: [TrainingJob\nmetadata: {", "", "malformed YAML: line"),
    "tab-indented-yaml": (b"kind: TrainingJob\nmetadata:\n\tname: x\n", "", "malformed YAML"),
    "empty-file": (b"", "", "file holds no documents"),
    "only-separators": (b"---\n---\n", "", "file holds no documents"),
    "not-a-mapping": (b"- just\n- a list\n", "", "document is a list, not a mapping"),
    "unknown-kind": (HEAD.encode() + b"kind: TrainingRun\nmetadata: {name: x}\n", "TrainingRun/x", "unknown kind"),
    "missing-kind": (HEAD.encode() + b"metadata: {name: x}\n", "?/x", "kind: required field is missing"),
    "wrong-apiversion": (
        b"apiVersion: kubeforge.dev/v1\nkind: TrainingJob\nmetadata: {name: x}\n" + TJ_SPEC.encode(),
        "TrainingJob/x",
        "apiVersion: got 'kubeforge.dev/v1'",
    ),
    "missing-apiversion": (b"kind: TrainingJob\nmetadata: {name: x}\n", "TrainingJob/x", "apiVersion: got None"),
    "missing-metadata": (
        HEAD.encode() + b"kind: TrainingJob\n" + TJ_SPEC.encode(),
        "TrainingJob/<unnamed>",
        "metadata",
    ),
    "missing-spec-field": (
        HEAD.encode()
        + b"kind: TrainingJob\nmetadata: {name: x}\nspec:\n  dataRef: {name: d}\n  training: {maxSteps: 1}\n",
        "TrainingJob/x",
        "spec.checkpoint: required field is missing",
    ),
    "wrong-type": (
        HEAD.encode()
        + b"kind: TrainingJob\nmetadata: {name: x}\n"
        + TJ_SPEC.replace("maxSteps: 10", "maxSteps: lots").encode(),
        "TrainingJob/x",
        "spec.training.maxSteps: must be an integer (got 'lots')",
    ),
    "unknown-field": (
        HEAD.encode() + b"kind: TrainingJob\nmetadata: {name: x}\n" + TJ_SPEC.encode() + b"  epocs: 3\n",
        "TrainingJob/x",
        "spec.epocs: unknown field",
    ),
    "negative-learning-rate": (
        HEAD.encode()
        + b"kind: TrainingJob\nmetadata: {name: gpt-small}\n"
        + TJ_SPEC.replace("maxSteps: 10", "maxSteps: 10, learningRate: -0.1").encode(),
        "TrainingJob/gpt-small",
        "spec.training.learningRate: must be greater than 0",
    ),
    "cel-split-sum": (
        HEAD.encode() + b"kind: DataPipeline\nmetadata: {name: d}\nspec:\n  source: {uris: [/x]}\n"
        b"  output: {uri: /o}\n  split: {train: 0.8, validation: 0.1, test: 0.2}\n",
        "DataPipeline/d",
        "spec.split: split fractions train + validation + test must sum to 1",
    ),
    "cel-replicas": (
        HEAD.encode()
        + b"kind: ModelDeployment\nmetadata: {name: m}\nspec:\n  modelUri: /m\n  replicas: {min: 4, max: 2}\n",
        "ModelDeployment/m",
        "spec.replicas: replicas.min must be less than or equal to replicas.max",
    ),
    "invalid-utf8": (HEAD.encode() + b"kind: TrainingJob\nmetadata: {name: \xff\xfe}\n", "", "not valid UTF-8"),
    "bad-name": (
        HEAD.encode() + b"kind: ModelDeployment\nmetadata: {name: My.Model}\nspec: {modelUri: /m}\n",
        "ModelDeployment/My.Model",
        "metadata.name: must be a DNS-1123 label",
    ),
}


def _run(tmp_path: Path, name: str, content: bytes) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    return subprocess.run(
        [sys.executable, "-m", "kubeforge.cli", "validate", str(path)], capture_output=True, text=True, timeout=60
    )


def test_quickstart_examples_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(REPO_ROOT / "examples" / "quickstart")]) == 0
    out = capsys.readouterr().out
    for resource in ("DataPipeline/quickstart-corpus", "TrainingJob/quickstart-gpt", "ModelDeployment/quickstart-gpt"):
        assert f"{resource}: valid" in out


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_manifest_gives_one_precise_line_and_exit_1(tmp_path: Path, name: str) -> None:
    content, resource, fragment = BAD[name]
    result = _run(tmp_path, name, content)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if not line.endswith("problem(s) found")]
    assert lines, result.stderr
    assert any(fragment in line for line in lines), lines
    for line in lines:
        assert line.startswith(str(tmp_path / f"{name}.yaml")), line
        if resource:
            assert f": {resource}: " in line, line


def test_every_problem_in_a_directory_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, (content, _, _) in BAD.items():
        (tmp_path / f"{name}.yaml").write_bytes(content)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "good.yml").write_text(HEAD + "kind: TrainingJob\nmetadata: {name: good}\n" + TJ_SPEC)
    assert main(["validate", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    reported = {Path(line.split(":", 1)[0].split("#")[0]).stem for line in captured.err.splitlines()}
    assert set(BAD) <= reported
    assert "TrainingJob/good: valid" in captured.out


def test_multi_document_file_names_each_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = HEAD + "kind: TrainingJob\nmetadata: {name: a}\n" + TJ_SPEC
    bad = HEAD + "kind: TrainingJob\nmetadata: {name: b}\n" + TJ_SPEC.replace("maxSteps: 10", "maxSteps: 0")
    path = tmp_path / "multi.yaml"
    path.write_text(good + "---\n" + bad)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}#2: TrainingJob/b: spec.training.maxSteps: must be at least 1" in err


def test_duplicate_resources_and_missing_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = HEAD + "kind: TrainingJob\nmetadata: {name: same}\n" + TJ_SPEC
    (tmp_path / "a.yaml").write_text(doc)
    (tmp_path / "b.yaml").write_text(doc)
    assert main(["validate", str(tmp_path), str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert "metadata.name: duplicate TrainingJob named 'same'" in err
    assert "nope.yaml: no such file or directory" in err
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    assert main(["validate", str(empty)]) == 1
    assert "directory holds no .yaml" in capsys.readouterr().err


def _tj(name: str = "x", spec: str = TJ_SPEC) -> str:
    return HEAD + f"kind: TrainingJob\nmetadata: {{name: {name}}}\n" + spec


def _dp(steps: str) -> str:
    return (
        HEAD + "kind: DataPipeline\nmetadata: {name: d}\nspec:\n  source: {uris: [/x]}\n  output: {uri: /o}\n"
        f"  steps:\n    - {steps}\n"
    )


# What the API server rejects (issue #19) or can never run, one line each: (manifest, the line's path and message).
ONE_LINE = {
    "float-cpu": (
        _tj(spec=TJ_SPEC + "  workers: {count: 2, cpu: 0.5}\n"),
        'spec.workers.cpu: must be an integer or a string, not the number 0.5: write "500m"',
    ),
    "min-chars-above-max": (
        _dp("lengthFilter: {minChars: 500, maxChars: 100}"),
        "spec.steps[0].lengthFilter: minChars must be at most maxChars",
    ),
    "min-words-above-max": (
        _dp("lengthFilter: {minWords: 50, maxWords: 10}"),
        "spec.steps[0].lengthFilter: minWords must be at most maxWords",
    ),
    "long-name": (_tj(name="a" * 70), "metadata.name: metadata.name must be at most 63 characters"),
    "memory-lots": (
        _tj(spec=TJ_SPEC + "  workers: {memory: lots}\n"),
        "spec.workers.memory: 'lots' is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)",
    ),
    "warmup-beyond-max-steps": (
        _tj(spec=TJ_SPEC.replace("maxSteps: 10", "maxSteps: 10, warmupSteps: 20")),
        "spec.training: warmupSteps must be less than maxSteps",
    ),
    "absurd-max-steps": (
        _tj(spec=TJ_SPEC.replace("maxSteps: 10", "maxSteps: 1000000000000000000")),
        "spec.training.maxSteps: must be at most 100000000",
    ),
    "two-gpus-per-worker": (
        _tj(spec=TJ_SPEC + "  workers: {gpu: 2}\n"),
        "spec.workers.gpu: at most 1 GPU per worker: each worker process drives one GPU; set workers.count to the "
        "number of GPUs instead",
    ),
    "parameter-for-a-parameterless-step": (_dp("dropEmpty: {x: y}"), "spec.steps[0].dropEmpty: takes no parameters"),
    "typo-gets-a-suggestion": (
        _tj(spec=TJ_SPEC.replace("maxSteps: 10", "maxSteps: 10, learningRat: 0.1")),
        'spec.training.learningRat: unknown field (did you mean "learningRate"?)',
    ),
    "old-model-fields-get-the-migration": (
        _tj(spec=TJ_SPEC + "  model: {nLayers: 2, nHeads: 2, dModel: 64}\n"),
        "spec.model: the model section now describes a Hugging Face architecture; rename nLayers -> layers, "
        "nHeads -> heads, dModel -> hiddenSize",
    ),
    "old-pretrained-path-gets-the-migration": (
        _tj(spec=TJ_SPEC + "  model: {pretrained: {path: /m, format: huggingface}}\n"),
        "spec.model: renamed to pretrained.uri",
    ),
    "duplicate-key": (
        _tj(spec=TJ_SPEC.replace("  training: {maxSteps: 10}\n", "  training:\n    maxSteps: 10\n    maxSteps: 20\n")),
        "spec.training.maxSteps: duplicate key (line 8; first on line 7): YAML keeps only the last",
    ),
}


@pytest.mark.parametrize("name", sorted(ONE_LINE))
def test_what_the_api_server_rejects_is_one_line(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = ONE_LINE[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    assert main(["validate", "-q", str(path)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.endswith("problem(s) found")]
    assert len(lines) == 1, lines
    resource = "DataPipeline/d" if text.count("DataPipeline") else f"TrainingJob/{'a' * 70 if 'long' in name else 'x'}"
    assert lines[0] == f"{path}: {resource}: {expected}" or lines[0].startswith(f"{path}: {resource}: {expected}")


def test_every_problem_of_a_document_in_one_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = (
        "spec:\n  dataRef: {name: d, uri: s3://x}\n  training: {maxSteps: lots, warmupSteps: -1}\n"
        "  checkpoint: {uri: /c, keepLst: 2}\n  model: {heads: 3}\n  workers: {cpu: 0.25}\n"
    )
    path = tmp_path / "many.yaml"
    path.write_text(_tj(name="Bad_Name", spec=spec))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    for expected in (
        "metadata.name: must be a DNS-1123 label",  # deeper check (the server allows more in a name)
        "spec.training.maxSteps: must be an integer (got 'lots')",  # schema
        "spec.training.warmupSteps: must be at least 0",  # schema bound
        'spec.checkpoint.keepLst: unknown field (did you mean "keepLast"?)',  # pruning
        'spec.workers.cpu: must be an integer or a string, not the number 0.25: write "250m"',
        "spec.dataRef: dataRef sets exactly one of name or uri",  # CEL
        "spec.model: model.hiddenSize must be divisible by model.heads",  # CEL on the server-defaulted hiddenSize
    ):
        assert expected in err, err
    assert "Traceback" not in err and "could not be evaluated" not in err


def test_cel_rules_see_the_servers_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """replicas: {min: 3} is defaulted by the server to max: 1 before the rule min <= max runs."""
    path = tmp_path / "md.yaml"
    path.write_text(HEAD + "kind: ModelDeployment\nmetadata: {name: m}\nspec: {modelUri: /m, replicas: {min: 3}}\n")
    assert main(["validate", str(path)]) == 1
    assert "spec.replicas: replicas.min must be less than or equal to replicas.max" in capsys.readouterr().err


def test_other_kinds_are_skipped_and_counted_unless_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: a}\n---\n" + _tj()
    )
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}#3: TrainingJob/x: valid" in out
    assert "skipped 2 document(s) of other kinds (--strict makes them errors)" in out
    assert main(["validate", "--strict", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}#1: ConfigMap/c: kind: unknown kind 'ConfigMap'" in err
    assert f"{path}#2: Application/a: kind: unknown kind 'Application'" in err
    # A kind of our own group that does not exist is always an error.
    path.write_text(HEAD + "kind: TrainingRun\nmetadata: {name: x}\n")
    assert main(["validate", str(path)]) == 1


def test_json_output_for_ci(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "good.yaml").write_text(_tj(name="good"))
    (tmp_path / "bad.yaml").write_text(_tj(name="bad", spec=TJ_SPEC + "  workers: {cpu: 1.5}\n"))
    (tmp_path / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n")
    assert main(["validate", "-o", "json", str(tmp_path)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["valid"] == [{"source": str(tmp_path / "good.yaml"), "resource": "TrainingJob/good"}]
    assert doc["skipped"] == [{"source": str(tmp_path / "ns.yaml"), "resource": "Namespace/n"}]
    (problem,) = doc["problems"]
    assert problem["resource"] == "TrainingJob/bad" and problem["path"] == "spec.workers.cpu"
    assert problem["message"].endswith('write "1500m"')


def test_all_shipped_examples_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's own command: the quickstart and the GitOps repository (whose other kinds are skipped)."""
    assert main(["validate", str(REPO_ROOT / "examples")]) == 0
    out = capsys.readouterr().out
    assert "TrainingJob/gitops-gpt: valid" in out and "document(s) of other kinds" in out


def test_the_shipped_manifests_helper_fails_a_test_on_a_manifest_the_server_would_reject(tmp_path: Path) -> None:
    from shipped import quickstart_manifest, validated

    assert quickstart_manifest("TrainingJob")["spec"]["workers"]["cpu"] == "500m"
    (tmp_path / "job.yaml").write_text(_tj(spec=TJ_SPEC + "  workers: {cpu: 0.5}\n"))
    with pytest.raises(pytest.fail.Exception, match=r'spec.workers.cpu: .* write "500m"'):
        validated(tmp_path)

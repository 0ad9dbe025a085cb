"""`kubeforge validate`: good manifests pass; every kind of bad input gives precise lines, exit 1, no traceback."""

from __future__ import annotations

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
    "foreign-kind": (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", "ConfigMap/c", "unknown kind"),
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
        "spec.training.maxSteps: must be a valid integer",
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

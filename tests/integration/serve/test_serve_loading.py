"""Loading model directories for serving: URIs, versions, and the errors build_app gives before anything starts."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
from kubeforge.api.modeldeployment import GenerationDefaults
from kubeforge_trainer import storage
from kubeforge_trainer.serve.protocol import CompletionRequest
from kubeforge_trainer.serve.runner import ModelRunner
from support.tiny_models import TinyModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def resource(**spec: object) -> dict:
    return {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"}, "spec": spec}


def test_runner_loads_a_file_uri_and_reads_the_version(tiny_lm: TinyModel) -> None:
    runner = ModelRunner.load(f"file://{tiny_lm.path}", version="")
    assert runner.version == "v1"  # from kubeforge.json
    assert runner.info()["task"] == "languageModeling"
    assert runner.info()["contextLength"] == tiny_lm.context_length


def test_a_missing_version_is_read_from_the_model_directory(tiny_lm: TinyModel) -> None:
    from kubeforge_trainer.serve.app import read_model_version
    from kubeforge_trainer.serve.settings import parse_app_args

    args = {"resource": resource(modelUri=str(tiny_lm.path)), "modelVersion": ""}  # the operator may not know it
    (stable,) = parse_app_args(args, read_model_version).versions
    assert (stable.version, stable.uri, stable.traffic_percent) == ("v1", str(tiny_lm.path), 100)


def test_build_app_refuses_a_missing_model_directory(tmp_path) -> None:
    from kubeforge_trainer.serve import build_app

    with pytest.raises(ValueError, match="does not exist"):
        build_app({"resource": resource(modelUri=str(tmp_path / "nothing")), "modelVersion": "v1"})


def test_load_refuses_a_directory_without_weights(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"not a model directory: config\.json is missing"):
        ModelRunner.load(str(tmp_path), version="v1")


def test_serving_a_lora_adapter_as_the_model_says_to_list_it_under_adapters(tmp_path) -> None:
    # What a TrainingJob with spec.model.lora exports: the adapter alone (peft's adapter_config.json, no config.json).
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": "base"}')
    with pytest.raises(FileNotFoundError, match=r"holds a LoRA adapter, not a model: .* spec\.adapters") as error:
        ModelRunner.load(str(tmp_path), version="v1")
    assert "\n" not in str(error.value)


def test_load_refuses_the_retired_kubeforge_format_in_one_line(tmp_path) -> None:
    # the pre-transformers export: kubeforge's own config.json, which names no model_type
    (tmp_path / "config.json").write_text('{"vocab_size": 512, "n_layers": 2, "task": "languageModeling"}')
    with pytest.raises(ValueError, match=r"config\.json has no model_type: not a Hugging Face directory") as error:
        ModelRunner.load(str(tmp_path), version="v1")
    assert "\n" not in str(error.value)


def greedy(runner: ModelRunner, prompts: tuple[str, ...]) -> list[str]:
    request = CompletionRequest(prompts=prompts, prompt_is_list=True, max_tokens=12, temperature=0.0)
    tasks = runner.prepare_completion(request, GenerationDefaults())
    runner.generate(tasks)
    return [t.text for t in tasks]


def test_runner_loads_a_model_from_an_s3_bucket_and_generates_as_from_disk(
    s3_endpoint: str, tiny_lm: TinyModel
) -> None:
    pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=s3_endpoint).create_dir("kubeforge-models")
    storage.upload_dir(tiny_lm.path, "s3://kubeforge-models/gpt/v1")
    remote = ModelRunner.load("s3://kubeforge-models/gpt/v1", version="")
    local = ModelRunner.load(str(tiny_lm.path), version="")
    assert (remote.version, remote.uri) == ("v1", "s3://kubeforge-models/gpt/v1")  # info() never tells the URI
    prompts = ("Return the", "Open a file and")
    assert greedy(remote, prompts) == greedy(local, prompts)


def test_a_missing_object_store_model_is_a_clear_error(s3_endpoint: str) -> None:
    pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=s3_endpoint).create_dir("kubeforge-empty")
    with pytest.raises(FileNotFoundError, match=r"^model directory s3://kubeforge-empty/nothing/here does not exist$"):
        ModelRunner.load("s3://kubeforge-empty/nothing/here", version="v1")

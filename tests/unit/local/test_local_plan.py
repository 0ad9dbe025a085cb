"""Reference resolution and ordering of a local run: order, external references, and every kind of bad reference."""

from __future__ import annotations

import pytest
from kubeforge.local.plan import CycleError, capacity_problems, plan_run, references_of, topological_order


def labels(steps) -> list[str]:
    return [s.label for s in steps]


def test_runs_data_then_training_then_serving_whatever_the_file_order(
    manifests, datapipeline, trainingjob, modeldeployment
):
    docs = manifests(modeldeployment("md", "gpt"), trainingjob("gpt", "corpus"), datapipeline("corpus"))
    steps, problems = plan_run(docs, {})
    assert problems == []
    assert labels(steps) == ["DataPipeline/corpus", "TrainingJob/gpt", "ModelDeployment/md"]
    assert [r.field for r in steps[1].references] == ["spec.dataRef.name"]
    assert steps[1].external == []


def test_independent_resources_keep_file_order_within_a_kind(manifests, datapipeline, trainingjob):
    docs = manifests(datapipeline("b"), datapipeline("a"), trainingjob("t2", "a"), trainingjob("t1", "b"))
    steps, problems = plan_run(docs, {})
    assert problems == []
    assert labels(steps) == ["DataPipeline/b", "DataPipeline/a", "TrainingJob/t2", "TrainingJob/t1"]


def test_canary_model_is_a_dependency(manifests, trainingjob, modeldeployment):
    docs = manifests(modeldeployment("md", "gpt", canary="gpt2"), trainingjob("gpt2", None), trainingjob("gpt", None))
    steps, problems = plan_run(docs, {})
    assert problems == []
    assert labels(steps)[-1] == "ModelDeployment/md"
    assert {r.field for r in steps[-1].references} == {"spec.modelRef.name", "spec.canary.modelRef.name"}


def test_dataref_uri_needs_no_datapipeline(manifests, trainingjob):
    steps, problems = plan_run(manifests(trainingjob("gpt", None)), {})
    assert problems == []
    assert steps[0].references == []


def test_reference_to_a_resource_an_earlier_run_completed_resolves_externally(manifests, trainingjob):
    steps, problems = plan_run(manifests(trainingjob("gpt", "corpus")), {("DataPipeline", "corpus"): "Succeeded"})
    assert problems == []
    assert [r.key for r in steps[0].external] == [("DataPipeline", "corpus")]


def test_missing_reference_names_resource_field_and_fix(manifests, trainingjob):
    _, problems = plan_run(manifests(trainingjob("gpt", "nope")), {})
    assert len(problems) == 1
    text = str(problems[0])
    assert "TrainingJob/gpt: spec.dataRef.name: DataPipeline 'nope' not found" in text
    assert "add its manifest" in text
    assert "\n" not in text


def test_reference_to_an_earlier_run_that_did_not_succeed_says_how_it_ended(manifests, modeldeployment):
    _, problems = plan_run(manifests(modeldeployment("md", "gpt")), {("TrainingJob", "gpt"): "Failed"})
    assert len(problems) == 1
    assert "ModelDeployment/md: spec.modelRef.name: TrainingJob 'gpt' not found" in str(problems[0])
    assert "its last local run ended Failed" in str(problems[0])


def test_same_name_in_two_namespaces_is_ambiguous(manifests, datapipeline, trainingjob):
    docs = manifests(
        datapipeline("corpus", namespace="a"), datapipeline("corpus", namespace="b"), trainingjob(namespace="a")
    )
    _, problems = plan_run(docs, {})
    assert len(problems) == 1
    assert "DataPipeline/corpus: metadata.namespace" in str(problems[0])
    assert "ambiguous" in str(problems[0])


def test_reference_across_namespaces_is_rejected(manifests, datapipeline, trainingjob):
    docs = manifests(datapipeline("corpus", namespace="team-a"), trainingjob("gpt", "corpus", namespace="team-b"))
    _, problems = plan_run(docs, {})
    assert len(problems) == 1
    assert "TrainingJob/gpt: spec.dataRef.name: DataPipeline 'corpus' is in namespace 'team-a'" in str(problems[0])


def test_unset_namespace_is_default(manifests, datapipeline, trainingjob):
    docs = manifests(datapipeline("corpus", namespace="default"), trainingjob("gpt", "corpus"))
    _, problems = plan_run(docs, {})
    assert problems == []


def test_task_mismatch_between_data_and_model_is_caught_before_running(manifests, datapipeline, trainingjob):
    docs = manifests(
        datapipeline("corpus", task="languageModeling"), trainingjob("gpt", "corpus", task="classification")
    )
    _, problems = plan_run(docs, {})
    assert len(problems) == 1
    assert "TrainingJob/gpt: spec.model.task: is 'classification' but DataPipeline/corpus prepares" in str(problems[0])


@pytest.mark.parametrize(
    ("objective", "data_task", "problem"),
    [
        ("sft", "chat", None),
        ("dpo", "preference", None),
        (
            "dpo",
            "chat",
            "TrainingJob/gpt: spec.objective: is 'dpo' but DataPipeline/corpus prepares 'chat' data "
            "(spec.tokenizer.task)",
        ),
    ],
)
def test_the_objective_picks_the_data_task(manifests, datapipeline, trainingjob, objective, data_task, problem):
    job = trainingjob("gpt", "corpus")
    job["spec"]["objective"] = objective
    _, problems = plan_run(manifests(datapipeline("corpus", task=data_task), job), {})
    assert [str(p).split(": ", 1)[1] for p in problems] == ([problem] if problem else [])


def test_every_problem_is_reported_at_once(manifests, trainingjob, modeldeployment):
    docs = manifests(trainingjob("a", "x"), trainingjob("b", "y"), modeldeployment("md", "c"))
    _, problems = plan_run(docs, {})
    assert sorted(p.resource for p in problems) == ["ModelDeployment/md", "TrainingJob/a", "TrainingJob/b"]


def test_references_of_each_kind(manifests, datapipeline, trainingjob, modeldeployment):
    dp, tj, md = manifests(datapipeline(), trainingjob(), modeldeployment(canary="other"))
    assert references_of(dp) == []
    assert [(r.field, r.kind, r.name) for r in references_of(tj)] == [("spec.dataRef.name", "DataPipeline", "corpus")]
    assert [r.name for r in references_of(md)] == ["gpt", "other"]


def test_topological_order_respects_needs_and_input_order():
    assert topological_order(["c", "b", "a"], {"c": ["a"], "b": []}) == ["b", "a", "c"]
    assert topological_order(["x", "y"], {"x": ["not-a-node"]}) == ["x", "y"]


def test_topological_order_reports_the_cycle():
    with pytest.raises(CycleError) as info:
        topological_order(["a", "b", "c", "d"], {"a": ["b"], "b": ["c"], "c": ["a"], "d": []})
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    assert str(info.value).count("->") == 3


def test_training_workers_must_leave_a_cpu_for_the_data_stream(manifests, trainingjob):
    job = trainingjob()
    job["spec"]["workers"] = {"count": 2, "cpu": 1}
    (tj,) = manifests(job)
    problems = capacity_problems([tj], cpus=2)
    assert len(problems) == 1
    text = str(problems[0])
    assert "TrainingJob/gpt: spec.workers.cpu: 2 worker(s) x 1 CPU take 2 of the 2 CPU(s)" in text
    assert 'set workers.cpu to "500m"' in text
    assert capacity_problems([tj], cpus=3) == []
    job["spec"]["workers"]["cpu"] = "500m"
    assert capacity_problems(manifests(job), cpus=2) == []


def test_deployment_replicas_must_fit(manifests, modeldeployment):
    md = modeldeployment(canary="other")
    md["spec"]["resources"] = {"cpu": 3}
    md["spec"]["replicas"] = {"min": 1, "max": 4}
    problems = capacity_problems(manifests(md), cpus=2)
    assert len(problems) == 1
    assert "ModelDeployment/gpt: spec.resources.cpu: 1 replica(s) x 3 CPU need 3 CPUs" in str(problems[0])
    md["spec"]["resources"] = {"cpu": 1}
    assert capacity_problems(manifests(md), cpus=2) == [], "autoscaling beyond the machine is allowed"
    md["spec"]["replicas"] = {"min": 3, "max": 4}
    assert len(capacity_problems(manifests(md), cpus=2)) == 1


def test_direct_ingress_needs_one_replica_on_one_local_node(manifests, modeldeployment):
    md = modeldeployment()
    md["spec"]["ingress"] = "direct"
    md["spec"]["replicas"] = {"min": 1, "max": 2}
    problems = capacity_problems(manifests(md), cpus=2)
    assert [str(p) for p in problems] == [
        f"{problems[0].source}: ModelDeployment/gpt: spec.replicas.max: ingress: direct runs one replica per Ray node "
        "and this local Ray is one node; set replicas.max to 1 (it is 2) or use ingress: proxy"
    ]
    md["spec"]["replicas"] = {"min": 1, "max": 1}
    assert capacity_problems(manifests(md), cpus=2) == []

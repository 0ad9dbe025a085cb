"""The kopf entry module: settings, the registered handlers, credentials shared with kopf, the CLI command."""

from __future__ import annotations

import logging

import kopf
from kubeforge.cli import COMMANDS, build_parser
from kubeforge.config import OperatorConfig
from kubeforge.constants import FINALIZER
from kubeforge.controller import configure_settings, register
from kubeforge.handlers import child_informers
from kubeforge.handlers.common import OperatorContext
from kubeforge.handlers.informer import namespace_matches
from kubeforge.handlers.kube import KubeApi, connection_info
from kubeforge.handlers.modeldeployment import serves_models_of
from kubeforge.handlers.state import ChildStore, ChildVersions, Dependents, Schedule
from kubeforge.handlers.trainingjob import waits_for
from kubernetes import client


def handler_ids(registry: kopf.OperatorRegistry) -> set[str]:
    """Ids of every registered handler."""
    groups = (registry._activities, registry._changing, registry._watching, registry._spawning, registry._indexing)
    return {str(handler.id) for group in groups for handler in group.get_all_handlers()}


def test_settings_use_our_finalizer_annotations_and_server_side_child_filters() -> None:
    settings = kopf.OperatorSettings()
    configure_settings(settings, OperatorConfig(watch_namespaces=("team-a",)))
    # Exact namespace names: kopf serves them without listing namespaces (no cluster-wide permission needed).
    assert settings.scanning.disabled is True
    assert settings.persistence.finalizer == FINALIZER
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == "kubeforge.dev"
    assert settings.peering.name == "kubeforge" and settings.peering.clusterwide is False
    assert dict(settings.watching.label_selectors.items()) == {}  # kopf watches our kinds only
    # Only kopf's warnings and errors become Events (our own Events tell the transitions).
    assert settings.posting.enabled and settings.posting.level == logging.WARNING


def test_namespace_patterns_and_cluster_mode_keep_kopfs_namespace_scanning() -> None:
    for namespaces in (("team-*",), ("team-a", "!kube-system"), ()):
        settings = kopf.OperatorSettings()
        configure_settings(settings, OperatorConfig(watch_namespaces=namespaces))
        assert settings.scanning.disabled is False, namespaces


def test_every_kind_has_watch_event_handlers_only_so_kopf_needs_no_finalizer() -> None:
    registry = kopf.OperatorRegistry()
    register(registry, OperatorConfig())
    ids = handler_ids(registry)
    # One handler per kind (kopf's cost is per handler invocation); no index (the operator keeps its own, so
    # nothing waits for kopf's indices at start-up); the children are watched by the operator's own informers.
    assert {"datapipelines_watch", "trainingjobs_watch", "modeldeployment_event"} <= ids
    assert registry._indexing.get_all_handlers() == []
    assert {"operator_startup", "operator_login", "operator_cleanup"} <= ids
    # No change handlers, timers or daemons: kopf adds its finalizer and annotations for those alone.
    assert registry._changing.get_all_handlers() == [] and registry._spawning.get_all_handlers() == []


def test_kopf_gets_the_same_server_and_token_as_the_operators_client() -> None:
    configuration = client.Configuration()
    configuration.host = "https://10.0.0.1:443"
    configuration.api_key = {"BearerToken": "abc"}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    configuration.ssl_ca_cert = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    info = connection_info(configuration)
    assert info.server == "https://10.0.0.1:443"
    assert (info.scheme, info.token) == ("Bearer", "abc")
    assert info.ca_path == configuration.ssl_ca_cert and info.insecure is False


def test_kubeforge_operator_is_a_cli_command() -> None:
    assert "operator" in COMMANDS
    args = build_parser(COMMANDS).parse_args(["operator"])
    assert args.func is COMMANDS["operator"][0]


def test_namespace_flags_win_over_the_environment_like_kopf_run() -> None:
    parser = build_parser(COMMANDS)
    env = OperatorConfig.from_env({"KUBEFORGE_WATCH_NAMESPACES": "from-env"})
    args = parser.parse_args(["operator", "--namespace", "team-a", "-n", "team-b", "--namespace", "team-a"])
    assert env.with_namespaces(args.namespace, args.all_namespaces).watch_namespaces == ("team-a", "team-b")
    args = parser.parse_args(["operator", "-A"])
    assert env.with_namespaces(args.namespace, args.all_namespaces).watch_namespaces == ()
    args = parser.parse_args(["operator"])
    assert env.with_namespaces(args.namespace, args.all_namespaces).watch_namespaces == ("from-env",)


def test_namespace_and_all_namespaces_together_are_one_clear_error(capsys) -> None:
    from kubeforge.cli import main

    assert main(["operator", "-n", "team-a", "--all-namespaces"]) == 2
    assert capsys.readouterr().err.strip() == "kubeforge operator: --namespace and --all-namespaces exclude each other"


def test_the_schedule_hands_out_due_resources_once_and_backs_off_failures() -> None:
    schedule = Schedule()
    a, b = ("TrainingJob", "ml", "a"), ("TrainingJob", "ml", "b")
    schedule.at(a, 10.0)
    schedule.at(b, 5.0)
    schedule.at(a, 20.0)  # rescheduled: the entry at 10 is stale
    assert schedule.pop_due(9.0) == [b]
    assert schedule.pop_due(15.0) == []
    assert schedule.pop_due(25.0) == [a] and len(schedule) == 0
    delays = [schedule.failed(a, resync=60.0) for _ in range(6)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0] and schedule.failing(a)
    schedule.succeeded(a, resync=60.0)
    assert not schedule.failing(a)
    schedule.drop(a)
    assert schedule.pop_due(float("inf")) == []


def test_the_resync_skips_only_resources_whose_status_reflects_the_child_as_last_seen() -> None:
    versions = ChildVersions()
    key = ("TrainingJob", "ml", "gpt")
    assert not versions.up_to_date(key)  # never derived: re-check
    versions.seen(key, "7")
    versions.derived(key, "7")
    assert versions.up_to_date(key)
    versions.seen(key, "9")  # KubeRay changed the RayJob; that event's reconcile has not written yet
    assert not versions.up_to_date(key)
    versions.derived(key, "9")
    assert versions.up_to_date(key)
    versions.derived(key, None)  # no child (waiting for data): always re-check
    assert not versions.up_to_date(key)
    versions.derived(key, "9")
    versions.forget(key)
    assert not versions.up_to_date(key)


def test_dependents_follow_each_dependents_latest_spec_and_forget_it() -> None:
    dependents = Dependents()
    dependents.set("ml", "job-a", waits_for({"spec": {"dataRef": {"name": "corpus"}}}))
    dependents.set("ml", "job-b", waits_for({"spec": {"dataRef": {"name": "corpus"}}}))
    assert dependents.of("ml", "corpus") == ["job-a", "job-b"] and dependents.of("other", "corpus") == []
    started = {"spec": {"dataRef": {"name": "corpus"}}, "status": {"childName": "job-a-train"}}
    dependents.set("ml", "job-a", waits_for(started))  # started: no longer waits
    assert dependents.of("ml", "corpus") == ["job-b"]
    deployment = {"spec": {"modelRef": {"name": "sft"}, "canary": {"modelRef": {"name": "dpo"}}}}
    dependents.set("ml", "serve", serves_models_of(deployment))
    assert dependents.of("ml", "sft") == ["serve"] and dependents.of("ml", "dpo") == ["serve"]
    dependents.set("ml", "serve", [])
    assert dependents.of("ml", "sft") == [] and dependents.of("ml", "dpo") == []


def test_the_child_store_keeps_slim_children_per_owner() -> None:
    store = ChildStore()
    owner = ("TrainingJob", "ml", "gpt")
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "gpt-train", "namespace": "ml", "resourceVersion": "5", "managedFields": [{}] * 50},
        "spec": {"suspend": False, "rayClusterSpec": {"workerGroupSpecs": [{"template": {}}]}},
        "status": {"jobDeploymentStatus": "Running"},
    }
    assert not store.synced("rayjobs")
    store.put(owner, rayjob)
    assert store.get(owner, "gpt-train") == {
        "metadata": {"name": "gpt-train", "namespace": "ml", "resourceVersion": "5"},
        "spec": {"suspend": False},
        "status": {"jobDeploymentStatus": "Running"},
    }
    assert store.get(owner, "gpt-train-r1") is None and len(store) == 1
    store.mark_synced("rayjobs")
    assert store.synced("rayjobs") and not store.synced("rayservices")
    store.remove(owner, "gpt-train")
    assert store.owners() == [] and len(store) == 0
    store.put(owner, rayjob)
    store.forget(owner)
    assert store.get(owner, "gpt-train") is None


def test_namespace_patterns_match_as_in_kopf() -> None:
    assert namespace_matches("team-a", ("team-*",)) and not namespace_matches("ml", ("team-*",))
    assert namespace_matches("ml", ("!kube-system",)) and not namespace_matches("kube-system", ("!kube-*",))
    assert namespace_matches("ml", ("team-*,ml",)) and not namespace_matches("team-x", ("team-*", "!team-x"))


def test_children_are_watched_per_namespace_or_over_the_cluster_with_our_label() -> None:
    def scopes(namespaces: tuple[str, ...]) -> list[tuple[str, str | None, tuple[str, ...]]]:
        ctx = OperatorContext(config=OperatorConfig(watch_namespaces=namespaces), api=KubeApi(client.Configuration()))
        informers = child_informers(ctx)
        assert {i.selector for i in informers} == {"app.kubernetes.io/managed-by=kubeforge"}
        return sorted((i.resource.plural, i.namespace, i.namespace_patterns) for i in informers)

    assert scopes(("a", "b")) == [
        ("rayjobs", "a", ()),
        ("rayjobs", "b", ()),
        ("rayservices", "a", ()),
        ("rayservices", "b", ()),
    ]
    assert scopes(()) == [("rayjobs", None, ()), ("rayservices", None, ())]
    assert scopes(("team-*",)) == [("rayjobs", None, ("team-*",)), ("rayservices", None, ("team-*",))]

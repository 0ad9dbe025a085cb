"""The kopf entry module: settings, the registered handlers, credentials shared with kopf, the CLI command."""

from __future__ import annotations

import logging

import kopf
from kubeforge.cli import COMMANDS, build_parser
from kubeforge.config import OperatorConfig
from kubeforge.constants import FINALIZER
from kubeforge.controller import configure_settings, register
from kubeforge.handlers.common import ChildVersions
from kubeforge.handlers.kube import connection_info
from kubernetes import client


def handler_ids(registry: kopf.OperatorRegistry) -> set[str]:
    """Ids of every registered handler."""
    groups = (registry._activities, registry._changing, registry._watching, registry._spawning, registry._indexing)
    return {str(handler.id) for group in groups for handler in group.get_all_handlers()}


def test_settings_use_our_finalizer_annotations_and_server_side_child_filters() -> None:
    settings = kopf.OperatorSettings()
    configure_settings(settings, OperatorConfig(watch_namespaces=("team-a",)))
    assert settings.persistence.finalizer == FINALIZER
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == "kubeforge.dev"
    assert settings.peering.name == "kubeforge" and settings.peering.clusterwide is False
    selectors = dict(settings.watching.label_selectors.items())
    assert sorted(selectors.values()) == ["app.kubernetes.io/managed-by=kubeforge"] * 2
    # Only kopf's warnings and errors become Events (our own Events tell the transitions).
    assert settings.posting.enabled and settings.posting.level == logging.WARNING


def test_every_kind_has_its_handlers_named_kind_event() -> None:
    registry = kopf.OperatorRegistry()
    register(registry, OperatorConfig())
    ids = handler_ids(registry)
    for kind in ("datapipeline", "trainingjob", "modeldeployment"):
        for event in ("create", "resume", "update", "delete", "resync", "child_status"):
            assert f"{kind}_{event}" in " ".join(ids), f"{kind}_{event}"
    assert {"operator_startup", "operator_login", "operator_cleanup"} <= ids
    assert any(i.startswith("trainingjob_data_ready") for i in ids)
    assert any(i.startswith("modeldeployment_model_ready") for i in ids)


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

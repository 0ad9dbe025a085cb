"""The operator's own Kubernetes API calls (children, cross-object status writes), async over the official client.

kopf talks to the API server for watching and for patching the object being handled; everything else goes through
this module. Transient errors (429, 5xx, connection failures) are retried here with exponential backoff; 404 and
409 become exceptions the handlers act on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf
import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .. import __version__
from ..constants import GROUP, KINDS, RAY_GROUP, RAY_VERSION, VERSION

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = f"kubeforge-operator/{__version__}"
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_DELAYS = (0.1, 0.3, 1.0, 2.0)
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read


@dataclass(frozen=True)
class Resource:
    """A group/version/plural triple."""

    group: str
    version: str
    plural: str


RAYJOBS = Resource(RAY_GROUP, RAY_VERSION, "rayjobs")
RAYSERVICES = Resource(RAY_GROUP, RAY_VERSION, "rayservices")
# A run's own identity (builders/access.py). The core group ("") is served by CoreV1Api, the rest by CustomObjectsApi.
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles")
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings")


def kubeforge_resource(kind: str) -> Resource:
    """The Resource of a kubeforge kind."""
    return Resource(GROUP, VERSION, KINDS[kind][0])


class NotFound(Exception):
    """The object or its resource type does not exist."""


class Conflict(Exception):
    """A create found the name taken, or a patch's resourceVersion was stale (HTTP 409)."""


class TransientError(Exception):
    """The API server kept failing after the retries; the caller retries later."""


class ApiRejected(Exception):
    """The API server refused the request for good (400, 403, 422 ...): a bug or missing permission."""


def load_configuration(server: str | None = None) -> client.Configuration:
    """API client settings: the given server (tests, benchmark), else in-cluster, else the kubeconfig."""
    configuration = client.Configuration()
    if server:
        configuration.host = server
        return configuration
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return configuration


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials for kopf's own connection, so both clients talk to one server as one identity."""
    # kubernetes >= 36.0.1 keeps the bearer token under BearerToken, older versions under authorization.
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, parts[0]) if len(parts) == 1 else (tuple(parts) if parts else (None, None))
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class KubeApi:
    """Async wrappers of CustomObjectsApi calls, run on a small thread pool."""

    def __init__(self, configuration: client.Configuration, workers: int = 8) -> None:
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, workers)
        self.configuration = configuration
        self._client = client.ApiClient(configuration)
        self._client.user_agent = USER_AGENT  # names the operator in the API server's audit log
        self._custom = client.CustomObjectsApi(self._client)
        self._core = client.CoreV1Api(self._client)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube-api")

    def close(self) -> None:
        """Release the threads and connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        for attempt, delay in enumerate((*RETRY_DELAYS, None)):
            try:
                return await loop.run_in_executor(self._executor, call)
            except ApiException as exc:
                if exc.status == 404:
                    raise NotFound(_reason(exc)) from None
                if exc.status == 409:
                    raise Conflict(_reason(exc)) from None
                if exc.status not in TRANSIENT_STATUSES:
                    raise ApiRejected(f"HTTP {exc.status}: {_reason(exc)}") from None
                problem = f"HTTP {exc.status}: {_reason(exc)}"
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if delay is None:
                raise TransientError(problem)
            log.debug("Kubernetes API call failed (attempt %d): %s; retrying in %.1fs", attempt + 1, problem, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            if resource == SERVICEACCOUNTS:
                found = await self._call(self._core.read_namespaced_service_account, name, namespace)
                return self._client.sanitize_for_serialization(found)
            return await self._call(
                self._custom.get_namespaced_custom_object,
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                name,
            )
        except NotFound:
            return None

    async def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the object; Conflict when the name is taken."""
        if resource == SERVICEACCOUNTS:
            account = client.V1ServiceAccount.from_dict(body)
            made = await self._call(self._core.create_namespaced_service_account, namespace, account)
            return self._client.sanitize_for_serialization(made)
        created = await self._call(
            self._custom.create_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            body,
        )
        if created is None:  # the client reads the body of 201 Created only; a server answering 200 gets a read
            created = await self.get(resource, namespace, body["metadata"]["name"])
        if created is None:
            raise TransientError(f"{body['metadata']['name']} vanished right after it was created")
        return created

    async def patch(self, resource: Resource, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the object; a metadata.resourceVersion in body makes it conditional (Conflict)."""
        return await self._call(
            self._custom.patch_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            body,
            _content_type="application/merge-patch+json",
        )

    async def patch_json(
        self, resource: Resource, namespace: str, name: str, operations: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """JSON patch (RFC 6902) of the object: replaces whole subtrees, which a merge patch cannot remove."""
        return await self._call(
            self._custom.patch_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            operations,
            _content_type="application/json-patch+json",
        )

    async def patch_status(self, resource: Resource, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the status subresource (conditional like patch())."""
        return await self._call(
            self._custom.patch_namespaced_custom_object_status,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            body,
            _content_type="application/merge-patch+json",
        )

    async def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete the object (its dependents in the background); False when it was already gone."""
        try:
            await self._call(
                self._custom.delete_namespaced_custom_object,
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                name,
                propagation_policy="Background",
            )
        except NotFound:
            return False
        return True


def _reason(exc: ApiException) -> str:
    return (exc.reason or "").strip() or "no reason given"

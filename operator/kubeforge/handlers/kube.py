"""The operator's own Kubernetes API calls (children, cross-object status writes), async over aiohttp.

kopf talks to the API server for watching and for patching the object being handled; everything else goes through
this module. Its requests run on the operator's event loop over one pooled aiohttp session (kopf's own HTTP client):
no thread pool, and no model (de)serialisation, because every body here is a plain dict. The credentials come from
the official client's configuration loader (in-cluster, kubeconfig, exec plugins), which kopf is given too.
Transient errors (429, 5xx, connection failures) are retried here with exponential backoff; 404 and 409 become
exceptions the handlers act on.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf
import orjson
from kubernetes import client, config

from .. import __version__
from ..constants import GROUP, KINDS, RAY_GROUP, RAY_VERSION, VERSION

log = logging.getLogger(__name__)

USER_AGENT = f"kubeforge-operator/{__version__}"
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_DELAYS = (0.1, 0.3, 1.0, 2.0)
CONNECT_TIMEOUT, REQUEST_TIMEOUT = 5.0, 30.0
# The bearer token is asked of the configuration's refresh hook at most this often (and again after a 401): the
# hook re-reads a rotated service-account token or runs an exec plugin when the token expired.
TOKEN_CHECK_SECONDS = 10.0
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True)
class Resource:
    """A group/version/plural triple."""

    group: str
    version: str
    plural: str


RAYJOBS = Resource(RAY_GROUP, RAY_VERSION, "rayjobs")
RAYSERVICES = Resource(RAY_GROUP, RAY_VERSION, "rayservices")
# A run's own identity (builders/access.py). The core group ("") lives under /api, every other group under /apis.
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


def bearer_header(configuration: client.Configuration) -> str | None:
    """The configuration's bearer token as its loaders left it ("Bearer <token>" or a bare token), after its refresh
    hook ran (a rotated service-account token, an exec plugin)."""
    # kubernetes >= 36.0.1 keeps the bearer token under BearerToken, older versions under authorization.
    return configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials for kopf's own connection, so both clients talk to one server as one identity."""
    header = bearer_header(configuration)
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
    """The API calls the operator makes besides kopf's: get, create, patch, delete of namespaced objects."""

    def __init__(self, configuration: client.Configuration, connections: int = 16) -> None:
        self.configuration = configuration
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._authorization: str | None = None
        self._authorization_checked = -TOKEN_CHECK_SECONDS

    def _open(self) -> aiohttp.ClientSession:
        """The session, created on first use (it belongs to the running event loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=self.configuration.host.rstrip("/") + "/",
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=_ssl_context(self.configuration)),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, sock_connect=CONNECT_TIMEOUT),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},  # names us in the audit log
            )
        return self._session

    def _auth_header(self, refresh: bool = False) -> str | None:
        """The Authorization header: bearer token or basic auth, as the configuration has it."""
        now = time.monotonic()
        if refresh or now - self._authorization_checked >= TOKEN_CHECK_SECONDS:
            cfg = self.configuration
            token = bearer_header(cfg)
            if token and not token.lower().startswith(("bearer ", "basic ")):
                token = f"Bearer {token}"
            self._authorization = token or (cfg.get_basic_auth_token() if cfg.username else None)
            self._authorization_checked = now
        return self._authorization

    def _options(self, headers: dict[str, str]) -> dict[str, Any]:
        """What every request sends besides its own arguments: the Authorization header, proxy, TLS server name."""
        if (authorization := self._auth_header()) is not None:
            headers = {**headers, "Authorization": authorization}
        return {
            "headers": headers,
            "proxy": self.configuration.proxy,
            "server_hostname": self.configuration.tls_server_name,
        }

    async def close(self) -> None:
        """Close the connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        answer: bool = True,
        **params: str,
    ) -> Any:
        """One API request with retries of what may heal; the parsed JSON answer (answer=False: {} on success,
        the answer unread: parsing a created object nobody reads is most of a small request's cost)."""
        data = None if body is None else orjson.dumps(body, default=_plain)
        refreshed = False
        for attempt, delay in enumerate((*RETRY_DELAYS, None)):
            headers = {"Content-Type": content_type} if data is not None else {}
            try:
                async with self._open().request(
                    method, path, data=data, params=params or None, **self._options(headers)
                ) as response:
                    raw = await response.read()
                    status = response.status
                    reason = response.reason or ""
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if status < 300:
                    return (orjson.loads(raw) if raw else None) if answer else {}
                reason = _reason(raw.decode(errors="replace"), reason)
                if status == 401 and not refreshed:  # an expired token: ask the hook for a fresh one, once
                    self._auth_header(refresh=True)
                    refreshed = True
                    continue
                if status == 404:
                    raise NotFound(reason)
                if status == 409:
                    raise Conflict(reason)
                if status == 410:
                    raise Gone(reason)
                if status not in TRANSIENT_STATUSES:
                    raise ApiRejected(f"HTTP {status}: {reason}")
                problem = f"HTTP {status}: {reason}"
            if delay is None:
                raise TransientError(problem)
            log.debug("Kubernetes API call failed (attempt %d): %s; retrying in %.1fs", attempt + 1, problem, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self._request("GET", _path(resource, namespace, name))  # type: ignore[no-any-return]
        except NotFound:
            return None

    async def create(
        self, resource: Resource, namespace: str, body: dict[str, Any], answer: bool = True
    ) -> dict[str, Any]:
        """Create the object and return it as created ({} when answer is False); Conflict when the name is taken."""
        created = await self._request("POST", _path(resource, namespace), body, answer=answer)
        if created is None:
            raise TransientError(f"creating {body['metadata']['name']} returned no object")
        return created  # type: ignore[no-any-return]

    async def patch(self, resource: Resource, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the object; a metadata.resourceVersion in body makes it conditional (Conflict)."""
        answer: dict[str, Any] = await self._request("PATCH", _path(resource, namespace, name), body, MERGE_PATCH)
        return answer

    async def patch_json(
        self, resource: Resource, namespace: str, name: str, operations: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """JSON patch (RFC 6902) of the object: replaces whole subtrees, which a merge patch cannot remove."""
        answer: dict[str, Any] = await self._request("PATCH", _path(resource, namespace, name), operations, JSON_PATCH)
        return answer

    async def patch_status(self, resource: Resource, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the status subresource (conditional like patch())."""
        path = _path(resource, namespace, name) + "/status"
        return await self._request("PATCH", path, body, MERGE_PATCH)  # type: ignore[no-any-return]

    async def list_page(
        self, resource: Resource, namespace: str | None, selector: str, limit: int, token: str | None = None
    ) -> dict[str, Any]:
        """One page of a (cluster-wide when namespace is None) list, with metadata.continue for the next one."""
        params = {"labelSelector": selector, "limit": str(limit)}
        if token:
            params["continue"] = token
        page: dict[str, Any] = await self._request("GET", _path(resource, namespace), **params)
        return page

    async def watch(
        self, resource: Resource, namespace: str | None, selector: str, version: str, timeout: int
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events ({"type", "object"}) after version, until the server ends the stream (after about
        timeout seconds); Gone when version is too old, TransientError when the connection fails."""
        params = {
            "watch": "true",
            "labelSelector": selector,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout),
        }
        try:
            async with self._open().get(
                _path(resource, namespace),
                params=params,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=timeout + 30),
                **self._options({}),
            ) as response:
                if response.status == 410:
                    raise Gone("HTTP 410")
                if response.status >= 300:
                    text = await response.text()
                    if response.status == 401:
                        self._auth_header(refresh=True)
                    raise TransientError(f"HTTP {response.status}: {_reason(text, response.reason or '')}")
                buffer = b""
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            event = orjson.loads(line)
                            if event.get("type") == "ERROR":
                                status = event.get("object") or {}
                                if status.get("code") == 410:
                                    raise Gone(status.get("message") or "HTTP 410")
                                raise TransientError(f"watch error: {status.get('message') or status}")
                            yield event
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from None

    async def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete the object (its dependents in the background); False when it was already gone."""
        try:
            await self._request("DELETE", _path(resource, namespace, name), propagationPolicy="Background")
        except NotFound:
            return False
        return True


class Gone(ApiRejected):
    """HTTP 410: a watch's resourceVersion or a list's continue token is too old; list again from the start."""


def _ssl_context(cfg: client.Configuration) -> ssl.SSLContext | bool:
    """TLS settings of the configuration: its CA, its client certificate, verification unless switched off."""
    if not cfg.host.startswith("https"):
        return True  # aiohttp's default; plain HTTP never uses it
    context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    if not cfg.verify_ssl:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if cfg.cert_file:
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    return context


def _path(resource: Resource, namespace: str | None, name: str | None = None) -> str:
    """The object's (or its collection's, cluster-wide when namespace is None) URL path, relative to the server."""
    base = f"api/{resource.version}" if not resource.group else f"apis/{resource.group}/{resource.version}"
    path = f"{base}/namespaces/{namespace}/{resource.plural}" if namespace else f"{base}/{resource.plural}"
    return f"{path}/{name}" if name else path


def _plain(value: Any) -> dict[str, Any]:
    """A mapping that is not a dict (a kopf body or one of its views) as a dict, for JSON encoding."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _reason(text: str, fallback: str) -> str:
    """The API server's message of an error answer (a Status object), else the HTTP reason."""
    try:
        message = orjson.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    return (message or fallback or "").strip() or "no reason given"

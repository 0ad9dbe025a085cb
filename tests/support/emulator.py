"""A stateful Kubernetes API emulator for the operator's tests and benchmark: kmock's, made to behave like an
API server where kopf and our handlers depend on it.

kmock.KubernetesEmulator (0.8) keeps objects in memory and serves list/watch/get/create/patch/delete over real
HTTP, but sets no uid, resourceVersion, generation or creationTimestamp, replays every object on a watch whatever
the requested resourceVersion, and does not isolate the status subresource. This subclass adds exactly that:

* uid, creationTimestamp and generation 1 on create, names from generateName; one cluster-wide resourceVersion
  bumped by every write;
* generation + 1 when a write to the main resource changes the spec;
* status isolation: the main resource ignores status, the status subresource ignores everything else;
* optimistic concurrency: a merge patch carrying a stale metadata.resourceVersion gets 409 Conflict, a JSON
  patch whose `test` fails gets 422;
* lists report the current resourceVersion and watches replay only objects newer than the requested one;
* label selectors (equality-based) on lists and watches: a watch shows an object entering the selection as ADDED
  and one leaving it as DELETED, as the API server's watch cache does; lists are paged (`limit`, `continue`).

* garbage collection: when an object is gone (deleted, or its last finalizer removed), the objects whose
  ownerReferences name its uid are deleted too (background propagation), as the Kubernetes garbage collector does.

It is still not a cluster: no admission or schema checks, no field selectors.
Events (core/v1) are stored like any object, so the operator's Events can be listed.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import datetime
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import enums, rendering
from kmock._internal.dicts import patch_dict

# (api group/version/plural, kind, namespaced, subresources) of everything the operator touches.
DECLARED_RESOURCES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("kubeforge.dev/v1alpha1/datapipelines", "DataPipeline", ("status",)),
    ("kubeforge.dev/v1alpha1/trainingjobs", "TrainingJob", ("status",)),
    ("kubeforge.dev/v1alpha1/modeldeployments", "ModelDeployment", ("status",)),
    ("ray.io/v1/rayjobs", "RayJob", ("status",)),
    ("ray.io/v1/rayservices", "RayService", ("status",)),
    ("monitoring.coreos.com/v1/podmonitors", "PodMonitor", ()),
    ("monitoring.coreos.com/v1/servicemonitors", "ServiceMonitor", ()),
)
VERBS = {"list", "watch", "get", "create", "patch", "delete"}


class Conflict(kmock.KubernetesError):
    """409: the object was modified since the resourceVersion the client sent."""


@attrs.define(kw_only=True)
class KubeforgeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with resourceVersions, generations, uids, status isolation and conditional writes."""

    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _current_version: int = attrs.field(default=0, init=False)
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    created_at: dict[tuple[str, str, str], float] = attrs.field(factory=dict, init=False)
    # kmock logs every request and matches each new one against the whole log, which is quadratic over a long run
    # (the benchmark). False forgets a request once it is answered; tests keep the log for request-count reactions
    # such as `emulator["post", path][:2] << 503` and for assertions on the requests.
    keep_request_log: bool = True
    _evolved: dict[int, rendering.Request] = attrs.field(factory=dict, init=False)
    # Requests answered, by (client, HTTP method) where client is the User-Agent's product ("kubeforge-operator",
    # "kopf", ...): the benchmark's API requests per resource, with the request log off.
    request_counts: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter, init=False)
    # Give every stored object a managedFields entry per writer, the size a real API server's server-side field
    # tracking adds (a skeleton of every field the writer set), so bodies on the wire are as large as on a cluster.
    managed_fields: bool = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        for path, kind, subresources in DECLARED_RESOURCES:
            self.resources[path] = kmock.ResourceInfo(
                kind=kind, namespaced=True, subresources=set(subresources), verbs=VERBS
            )

    def _next_version(self) -> str:
        self._current_version = next(self._versions)
        return str(self._current_version)

    def _has_status(self, request: rendering.Request) -> bool:
        resource = request.resource
        return resource is not None and resource in self.resources and "status" in self.resources[resource].subresources

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        agent = request.headers.get("User-Agent", "").split("/", 1)[0]
        self.request_counts[(agent, str(getattr(request.method, "value", request.method)).upper())] += 1
        try:
            return await self._handle_logged(request)
        finally:
            if not self.keep_request_log:
                self._forget(request)

    def _forget(self, request: rendering.Request) -> None:
        logged = self._evolved.pop(id(request), request)
        for index in range(len(self._requests) - 1, -1, -1):
            if self._requests[index] is logged:
                del self._requests[index]
                return

    async def _handle_logged(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.action not in (
            enums.action.CREATE,
            enums.action.UPDATE,
            enums.action.DELETE,
        ):
            return await super()._handle(request)
        # One write at a time, so versions, preconditions and the stored objects stay consistent.
        async with self._writes:
            try:
                if request.action == enums.action.CREATE:
                    request = self._replace(request, self._prepare_create(request))
                elif request.action == enums.action.UPDATE:
                    request = self._replace(request, self._prepare_update(request))
                else:
                    self._prepare_delete(request)
            except kmock.KubernetesError as exc:
                return await self._render_error(exc)
            key = (request.resource, request.namespace, request.name)
            uid = ((self._current(request) or {}).get("metadata") or {}).get("uid")
            response = await super()._handle(request)
            if uid and request.action != enums.action.CREATE and self._current(request) is None:
                await self._collect_garbage({uid}, skip=key)
            return response

    async def _collect_garbage(self, owners: set[str], skip: Any) -> None:
        """Delete the dependents of the deleted owners (uids), and theirs in turn; a dependent with finalizers
        is only marked for deletion, as on a real API server."""
        while owners:
            gone: set[str] = set()
            async with self._lock:
                for key, obj in list(self.objects.items()):
                    if key == skip or obj.deleted:
                        continue
                    meta = obj.raw.get("metadata") or {}
                    if not any(ref.get("uid") in owners for ref in meta.get("ownerReferences") or []):
                        continue
                    resource = key[0]
                    if meta.get("finalizers"):
                        if not meta.get("deletionTimestamp"):
                            marked = {"deletionTimestamp": _now(), "resourceVersion": self._next_version()}
                            obj.patch({"metadata": marked})
                            await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
                        continue
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
                    if meta.get("uid"):
                        gone.add(meta["uid"])
            owners = gone

    def _replace(self, old: rendering.Request, data: Any) -> rendering.Request:
        """The request with a new body, also in kmock's request log (its views match requests by identity)."""
        new = attrs.evolve(old, data=data)
        for index in range(len(self._requests) - 1, -1, -1):
            if self._requests[index] is old:
                self._requests[index] = new
                break
        if not self.keep_request_log:
            self._evolved[id(old)] = new
        return new

    def _prepare_create(self, request: rendering.Request) -> Any:
        data = copy.deepcopy(request.data) if isinstance(request.data, Mapping) else {}
        if self._has_status(request):
            data.pop("status", None)
        meta = data.setdefault("metadata", {})
        meta.setdefault("namespace", request.namespace)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_version(),
            generation=1,
            creationTimestamp=_now(),
        )
        if request.resource is not None:
            key = (str(request.resource.plural), meta.get("namespace") or "", meta.get("name") or "")
            self.created_at.setdefault(key, time.monotonic())
        if self.managed_fields:
            tracked = {k: v for k, v in data.items() if k != "status"}
            meta["managedFields"] = [_managed_entry(request, tracked, None)]
        return data

    def _current(self, request: rendering.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def _prepare_update(self, request: rendering.Request) -> Any:
        current = self._current(request)
        if current is None:
            return request.data  # kmock answers 404
        status_only = request.subresource == "status"
        isolated = self._has_status(request)
        meta = current.get("metadata", {})
        if isinstance(request.data, list):
            operations = [
                op
                for op in request.data
                if not isolated
                or op.get("path") == "/metadata/resourceVersion"
                or (op.get("path", "").startswith("/status") == status_only)
            ]
            try:
                patched = jsonpatch.apply_patch(copy.deepcopy(current), operations)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
            data: Any = [*operations, {"op": "replace", "path": "/metadata/resourceVersion", "value": ""}]
        else:
            body = copy.deepcopy(request.data) if isinstance(request.data, Mapping) else {}
            expected = (body.get("metadata") or {}).get("resourceVersion")
            if expected is not None and str(expected) != str(meta.get("resourceVersion")):
                raise Conflict(
                    status=409,
                    reason="Conflict",
                    message=f"the object has been modified; resourceVersion {expected} is stale",
                )
            if isolated and status_only:
                body = {"status": body.get("status")}
            elif isolated:
                body.pop("status", None)
            patched = dict(patch_dict(current, body))
            data = body
            if self.managed_fields:
                entries = [e for e in meta.get("managedFields") or [] if e.get("subresource") != request.subresource]
                changed = {"status": patched.get("status")} if status_only else {"spec": patched.get("spec")}
                entries.append(_managed_entry(request, changed, request.subresource))
                data.setdefault("metadata", {})["managedFields"] = entries
        version = self._next_version()
        generation = meta.get("generation") or 1
        if not status_only and patched.get("spec") != current.get("spec"):
            generation += 1
        if isinstance(data, list):
            data[-1]["value"] = version
            data.append({"op": "add", "path": "/metadata/generation", "value": generation})
        else:
            data.setdefault("metadata", {}).update(resourceVersion=version, generation=generation)
        return data

    def _prepare_delete(self, request: rendering.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            # kmock marks objects with finalizers by patching deletionTimestamp: give that write a version too.
            self.objects[key].patch({"metadata": {"resourceVersion": self._next_version()}})

    # kmock finds the object of a get/create/patch/delete by scanning every stored object (quadratic over a long
    # run); these look it up by its key instead. The state changes happen in kmock's _handle as before.

    async def _stored(self, request: rendering.Request, namespace: str | None, name: str | None) -> dict[str, Any]:
        key = (request.resource, namespace, name)
        async with self._lock:
            if key not in self.objects:
                raise kmock.KubernetesObjectNotFoundError()
            return self.objects[key].last.raw

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            return self.objects[key].raw

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        # An API server answers a create with 201 Created (the official client reads the body only then).
        meta = request.data.get("metadata", {}) if isinstance(request.data, Mapping) else {}
        stored = await self._stored(request, request.namespace or meta.get("namespace"), meta.get("name"))
        return kmock.Response(status=201, payload=stored)

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        return await self._stored(request, request.namespace, request.name)

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        return await self._stored(request, request.namespace, request.name)

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        # Read the version first: the snapshot then holds at least everything up to it.
        version = str(self._current_version)
        payload = await super()._serve_list(request)
        payload["metadata"] = {"resourceVersion": version}
        return _paginate(payload, request.params)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # send the headers now, even if nothing happens
        assert request.resource is not None
        since = int(request.params.get("resourceVersion") or 0)
        selector = request.params.get("labelSelector") or ""
        bus = self._buses[request.resource]
        check = self._KubernetesEmulator__check  # kmock's own request/object matcher
        async with self._lock:
            mark = await bus.mark()
            selected = {
                (namespace, name): obj.raw
                for (resource, namespace, name), obj in self.objects.items()
                if not obj.deleted
                and check(request, resource, namespace, name, strict=False)
                and _labels_match(obj.raw, selector)
            }
        visible = set(selected)
        try:
            for obj in selected.values():
                if int(obj.get("metadata", {}).get("resourceVersion") or 0) > since:
                    yield {"type": "ADDED", "object": obj}
            async for event in bus.stream(since=mark):
                obj = event.get("object", {})
                meta = obj.get("metadata", {})
                if not check(request, request.resource, meta.get("namespace"), meta.get("name"), strict=False):
                    continue
                if event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
                    yield event
                    continue
                # As the API server's watch cache filters: an object entering the selection is ADDED, one leaving
                # it (a label removed) DELETED, one outside it never shown.
                key = (meta.get("namespace"), meta.get("name"))
                was = key in visible
                now = event.get("type") != "DELETED" and _labels_match(obj, selector)
                (visible.add if now else visible.discard)(key)
                if was and now:
                    yield event
                elif now:
                    yield {"type": "ADDED", "object": obj}
                elif was:
                    yield {"type": "DELETED", "object": obj}
        finally:
            await bus.unmark(mark)


def _fields(value: Any) -> Any:
    """The FieldsV1 skeleton of a value: every key of every map, as the API server's field manager records it."""
    if isinstance(value, Mapping):
        return {f"f:{key}": _fields(item) for key, item in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return {f"k:{json.dumps({'name': item.get('name', index)})}": _fields(item) for index, item in enumerate(value)}
    return {}


def _managed_entry(request: rendering.Request, tracked: Mapping[str, Any], subresource: str | None) -> dict[str, Any]:
    """One metadata.managedFields entry for a write of the tracked fields."""
    entry = {
        "manager": request.headers.get("User-Agent", "unknown").split("/", 1)[0],
        "operation": "Update",
        "apiVersion": "/".join(str(request.url.path).strip("/").split("/")[1:3]),
        "time": _now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": _fields(tracked),
    }
    if subresource:
        entry["subresource"] = subresource
    return entry


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _labels_match(obj: Mapping[str, Any], selector: str) -> bool:
    """An equality-based label selector (`a=b,c!=d,e,!f`): every term holds."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            holds = labels.get(key) != value
        elif "=" in term:
            key, value = term.split("=", 1)
            holds = labels.get(key) == value.lstrip("=")
        elif term.startswith("!"):
            holds = term[1:] not in labels
        else:
            holds = term in labels
        if not holds:
            return False
    return True


def _paginate(payload: dict[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
    """A list the way the API server pages it: labelSelector applied, `limit` items at most, ordered by
    namespace and name, and a `continue` token naming the last one (later pages keep the first page's
    resourceVersion, as a real server serves every page from one snapshot)."""
    items = payload.get("items") or []
    if params.get("labelSelector"):
        items = [item for item in items if _labels_match(item, params["labelSelector"])]
    items.sort(key=lambda o: ((o.get("metadata") or {}).get("namespace") or "", o["metadata"].get("name") or ""))
    token = params.get("continue")
    if token:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))
        payload["metadata"]["resourceVersion"] = after["rv"]
        items = [o for o in items if [o["metadata"].get("namespace") or "", o["metadata"]["name"]] > after["key"]]
    limit = int(params.get("limit") or 0)
    if limit and len(items) > limit:
        items = items[:limit]
        last = items[-1]["metadata"]
        key = [last.get("namespace") or "", last["name"]]
        mark = {"key": key, "rv": payload["metadata"]["resourceVersion"]}
        payload["metadata"]["continue"] = base64.urlsafe_b64encode(json.dumps(mark).encode()).decode()
    payload["items"] = items
    return payload

"""The reconcile shared by the two job kinds (DataPipeline, TrainingJob): one RayJob per attempt.

Level-based: whatever triggered it, it reads the resource, the RayJob of the current attempt and (before the
start) the dependency, then creates the RayJob, starts a retry, or only derives the status.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from ..builders import build_rayjob, child_name, parse_resource, spec_hash
from ..builders.access import build_run_access
from ..builders.rayjob import build_retry
from ..conditions import SPEC_LOCKED, get_condition
from ..constants import ANNOTATION_SPEC_HASH
from ..status import ChildState, Dependency, Observation, is_settled, rayjob_state
from .common import MISSING, OperatorContext, Outcome, current_child, identity, make_outcome, record_child, spec_changed
from .kube import RAYJOBS, ROLEBINDINGS, ROLES, SERVICEACCOUNTS, Conflict, TransientError
from .kube import Resource as ApiResource

# (ctx, typed resource) -> (dependency, data URI); None when the kind has no dependency.
ResolveDependency = Callable[[OperatorContext, Any], Awaitable[tuple[Dependency, str | None]]]


async def create_child(
    ctx: OperatorContext,
    resource: ApiResource,
    owner: Mapping[str, Any],
    manifest: dict[str, Any],
    answer: bool = True,
) -> dict[str, Any] | None:
    """Create a child owned by owner; an existing one it owns is returned, a foreign one gives None (answer=False:
    {} for a new child, whose answer is not read)."""
    kopf.adopt(manifest, owner=dict(owner))
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        return await ctx.api.create(resource, namespace, manifest, answer=answer)
    except Conflict:
        existing = await ctx.api.get(resource, namespace, name)
    if existing is None:
        raise TransientError(f"{name} was being deleted while it was created; retrying")
    owner_uid = owner.get("metadata", {}).get("uid")
    refs = existing.get("metadata", {}).get("ownerReferences") or []
    return existing if any(ref.get("uid") == owner_uid for ref in refs) else None


ACCESS_RESOURCES = {"ServiceAccount": SERVICEACCOUNTS, "Role": ROLES, "RoleBinding": ROLEBINDINGS}


async def ensure_run_access(ctx: OperatorContext, kind: str, body: Mapping[str, Any]) -> ChildState | None:
    """Create the run's ServiceAccount, Role (its own status only) and RoleBinding, owned by the resource, before
    its Ray pods exist; None when they are in place, else the NameConflict state (a foreign object is never bound)."""
    namespace, name = identity(body)
    account = ((body.get("spec") or {}).get("serviceAccountName")) or None
    annotations = dict(ctx.config.run_service_account_annotations)
    for manifest in build_run_access(kind, name, namespace, account, annotations):
        if await create_child(ctx, ACCESS_RESOURCES[manifest["kind"]], body, manifest, answer=False) is None:
            return name_conflict(kind, manifest["metadata"]["name"], manifest["kind"])
    return None


def spec_lock_message(kind: str, body: Mapping[str, Any], child: Mapping[str, Any]) -> str | None:
    """Why the spec is locked, when it changed since the RayJob was built (suspend may change)."""
    if not spec_changed(body):  # derived for this generation already: the recorded condition stands, no rehash
        locked = get_condition((body.get("status") or {}).get("conditions") or [], SPEC_LOCKED)
        return locked.get("message") if locked and locked.get("status") == "True" else None
    recorded = (child.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
    if not recorded or recorded == spec_hash(body.get("spec") or {}):
        return None
    generation = body.get("metadata", {}).get("generation")
    return (
        f"spec changed (generation {generation}) after the {kind} started; RayJob {child['metadata']['name']} "
        f"keeps the spec it started with (only spec.suspend may change): create a new {kind} to run the change"
    )


def max_retries(body: Mapping[str, Any]) -> int:
    """failurePolicy.maxRetries of a TrainingJob body (0 for other kinds or when unset)."""
    policy = (body.get("spec") or {}).get("failurePolicy") or {}
    value = policy.get("maxRetries", 0)
    return value if isinstance(value, int) and value > 0 else 0


def name_conflict(kind: str, child: str, child_kind: str = "RayJob") -> ChildState:
    """The state of a resource whose child's name is taken by an object it does not own."""
    message = f"{child_kind} {child} exists and is not owned by this {kind}: rename one of them"
    return ChildState("Pending", "NameConflict", message)


async def pass_suspend_on(ctx: OperatorContext, body: Mapping[str, Any], child: Mapping[str, Any]) -> None:
    """Pass spec.suspend to the RayJob when the user changed the spec since the status was last derived (Kueue may
    toggle the RayJob's suspend too, so this is never a periodic correction). Level-based: the status's
    observedGeneration is the record, so a change made while the operator was down is passed on at its start."""
    suspend = bool((body.get("spec") or {}).get("suspend"))
    if (
        spec_changed(body)
        and (body.get("status") or {}).get("phase")
        and bool((child.get("spec") or {}).get("suspend")) != suspend
    ):
        namespace, _ = identity(body)
        await ctx.api.patch(RAYJOBS, namespace, child["metadata"]["name"], {"spec": {"suspend": suspend}})


async def manifest_from_spec(
    kind: str,
    ctx: OperatorContext,
    body: Mapping[str, Any],
    attempt: int,
    resolve: ResolveDependency | None,
) -> tuple[dict[str, Any] | None, Dependency | None, Observation | None]:
    """(RayJob manifest, dependency, None) when the spec is valid and its dependency ready, else
    (None, dependency, the observation to report: ValidationFailed or waiting)."""
    suspend = bool((body.get("spec") or {}).get("suspend"))
    resource, problem = parse_resource(body)
    if problem:
        return None, None, Observation(invalid=problem, retries=attempt, suspend_requested=suspend)
    dependency, data_uri = (None, None) if resolve is None else await resolve(ctx, resource)
    if dependency is not None and not dependency.ready:
        return None, dependency, Observation(dependency=dependency, retries=attempt, suspend_requested=suspend)
    manifest = build_rayjob(resource, ctx.config, raw_spec=body["spec"], data_uri=data_uri, attempt=attempt)
    return manifest, dependency, None


async def reconcile_job(
    kind: str,
    ctx: OperatorContext,
    body: Mapping[str, Any],
    *,
    child: Any = MISSING,
    resolve: ResolveDependency | None = None,
    extra: Callable[[Mapping[str, Any], ChildState], dict[str, Any]] | None = None,
) -> Outcome:
    """Bring a DataPipeline or TrainingJob one step closer to done and derive its status."""
    status = body.get("status") or {}
    generation = body.get("metadata", {}).get("generation")
    namespace, name = identity(body)
    if is_settled(kind, status, generation):
        return Outcome(status=dict(status))
    attempt = int(status.get("retries") or 0)
    expected = child_name(kind, name, attempt)
    if child is MISSING and not status.get("phase"):
        # Brand new: there is no RayJob yet. Should there be one after all (a status write was lost), creating it
        # answers 409 and create_child adopts it; its events then correct anything derived here.
        child = None
    elif child is MISSING or (child or {}).get("metadata", {}).get("name") != expected:
        child = await current_child(ctx, RAYJOBS, kind, namespace, name, expected)
    if child is None and status.get("childName") == expected and ctx.store.synced(RAYJOBS.plural):
        # The store lacks it: gone, or not in the watch yet (when not synced, current_child has just asked).
        child = await ctx.api.get(RAYJOBS, namespace, expected)
    dependency: Dependency | None = None

    if child is None and status.get("childName") == expected:
        # It was created and is gone: a failure (retried below if allowed), never a silent re-run of the whole job.
        state = ChildState("Failed", "RayJobDeleted", f"RayJob {expected} was deleted before the job finished")
    elif child is None:
        manifest, dependency, report = await manifest_from_spec(kind, ctx, body, attempt, resolve)
        if report is not None:
            return make_outcome(kind, body, report, "invalid" if report.invalid else "waiting")
        assert manifest is not None
        conflict = await ensure_run_access(ctx, kind, body)
        if conflict is not None:
            return make_outcome(kind, body, Observation(child=conflict, retries=attempt), "waiting")
        child = await create_child(ctx, RAYJOBS, body, manifest)
        if child is not None:
            record_child(ctx, kind, namespace, name, child)
        state = rayjob_state(child) if child is not None else name_conflict(kind, expected)
    else:
        state = rayjob_state(child)
        await pass_suspend_on(ctx, body, child)

    retried = False
    if state.phase == "Failed" and state.retryable and attempt < max_retries(body):
        # The retry copies the failed RayJob (the spec the job started with, read whole: the watch keeps only its
        # status); rebuilt only if that one is gone.
        failed = await ctx.api.get(RAYJOBS, namespace, expected) if child is not None else None
        if failed is not None:
            manifest = build_retry(failed, kind, name, attempt + 1)
        else:
            manifest, dependency, report = await manifest_from_spec(kind, ctx, body, attempt + 1, resolve)
            if report is not None:
                report = dataclasses.replace(report, retries=attempt)
                return make_outcome(kind, body, report, "invalid" if report.invalid else "waiting")
            assert manifest is not None
        attempt += 1
        expected = manifest["metadata"]["name"]
        child = await create_child(ctx, RAYJOBS, body, manifest)
        if child is not None:
            record_child(ctx, kind, namespace, name, child)
        state = rayjob_state(child) if child is not None else name_conflict(kind, expected)
        retried = child is not None

    observation = Observation(
        child_name=expected if child is not None else None,
        child=state,
        dependency=dependency,
        spec_locked=spec_lock_message(kind, body, child) if child is not None else None,
        suspend_requested=bool((body.get("spec") or {}).get("suspend")),
        retries=attempt,
        extra=extra(body, state) if extra is not None else {},
    )
    return make_outcome(kind, body, observation, retried=retried, child=child)

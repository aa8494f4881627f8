"""`POST /v1/ingest/fhir` bodies turned into resource changes (SPEC section 6.2).

Accepted: a bare resource (the interaction from `X-Tidings-Interaction`, else Medplum's
`X-Medplum-Interaction` / `X-Medplum-Deleted-Resource`, else create for `meta.versionId` 1 and
update otherwise); a Bundle of type `history`, `transaction` or `batch` (request method ->
interaction); and subscription notifications: R4 backport (`history`, `Parameters` status
first), R4B (`history`, `SubscriptionStatus` first) and R5 (`subscription-notification`), with
full-resource or id-only entries. A Bundle with one bad entry is refused whole.

Changes come out oldest first; a resource seen in several versions gets the earlier one as
`previous`, so `%previous` triggers work within one push.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.domain import secrets, signing
from app.domain.errors import Problem, ValidationFailed
from app.domain.models import Interaction, JSONObject, ResourceChange, SignatureScheme
from app.fhir.resource_types import is_resource_type

INTERACTION_HEADER = "X-Tidings-Interaction"
MEDPLUM_INTERACTION_HEADER = "X-Medplum-Interaction"
MEDPLUM_DELETED_HEADER = "X-Medplum-Deleted-Resource"
SIGNATURE_HEADER = signing.MEDPLUM_HEADER
BUNDLE_TYPES = ("history", "transaction", "batch", "subscription-notification")
MAX_PROBLEMS = 20

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ETAG = re.compile(r'^(?:W/)?"?([^"]+)"?$')
_METHODS = {
    "POST": Interaction.CREATE,
    "PUT": Interaction.UPDATE,
    "PATCH": Interaction.UPDATE,
    "DELETE": Interaction.DELETE,
}
_READS = frozenset({"GET", "HEAD"})
_STATUS_PROFILE = "backport-subscription-status"


class BadEntry(ValueError):
    """One part of a pushed body that is not a usable resource change."""

    def __init__(self, pointer: str, detail: str) -> None:
        super().__init__(f"{pointer}: {detail}")
        self.problem = Problem(pointer, detail)


@dataclass(frozen=True)
class PushedChange:
    """A change with when it happened (`meta.lastUpdated` or `response.lastModified`), if said."""

    change: ResourceChange
    moment: datetime | None = None


def signature_matches(body: bytes, secret: str, signature: str | None) -> bool:
    """Whether `signature` is Medplum's `X-Signature` (hex HMAC-SHA256) of `body` under `secret`."""
    if not signature:
        return False
    expected = signing.sign(
        SignatureScheme.MEDPLUM, secrets=[secret], message_id="-", timestamp=0, body=body
    )[SIGNATURE_HEADER]
    return secrets.keys_equal(expected, signature.strip().lower())


def parse_push(body: Any, headers: Mapping[str, str]) -> list[PushedChange]:
    """The resource changes a pushed body stands for, oldest first.

    Raises `ValidationFailed` with JSON pointers when the body, or any entry of a Bundle, is not
    a usable FHIR change; nothing of a refused body is to be stored.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    if not isinstance(body, dict):
        raise ValidationFailed([Problem("", "the body must be a FHIR resource (a JSON object)")])
    if body.get("resourceType") == "Bundle" and body.get("type") in BUNDLE_TYPES:
        return bundle_changes(body)
    if body.get("resourceType") == "Bundle" and body.get("type") is not None:
        kinds = ", ".join(BUNDLE_TYPES)
        detail = f"Bundle type {body.get('type')!r} is not accepted (send one of: {kinds})"
        raise ValidationFailed([Problem("/type", detail)])
    try:
        change = bare_change(body, lowered)
    except BadEntry as bad:
        raise ValidationFailed([bad.problem]) from None
    return [PushedChange(change, last_updated(change.resource))]


def bare_change(resource: JSONObject, headers: Mapping[str, str]) -> ResourceChange:
    """The change a single pushed resource stands for; `headers` keys are lower-case."""
    interaction = _header_interaction(headers)
    deleted = headers.get(MEDPLUM_DELETED_HEADER.lower(), "").strip()
    if deleted and interaction in (None, Interaction.DELETE) and not resource:
        resource_type, resource_id, version = _identity_from_url(
            deleted, "header:" + MEDPLUM_DELETED_HEADER
        )
        return ResourceChange(resource_type, resource_id, version, Interaction.DELETE, None)
    if "resourceType" not in resource:
        raise BadEntry("/resourceType", "not a FHIR resource: resourceType is missing")
    _check_resource(resource, "")
    if interaction is None:
        interaction = Interaction.DELETE if deleted else _implied_interaction(resource)
    return _change(resource, _version_of(resource), interaction)


def _header_interaction(headers: Mapping[str, str]) -> Interaction | None:
    for name in (INTERACTION_HEADER, MEDPLUM_INTERACTION_HEADER):
        value = headers.get(name.lower(), "").strip().lower()
        if value:
            try:
                return Interaction(value)
            except ValueError:
                detail = f"{value!r} is not an interaction (create, update or delete)"
                raise BadEntry(f"header:{name}", detail) from None
    return None


def _implied_interaction(resource: JSONObject) -> Interaction:
    return Interaction.CREATE if _version_of(resource) == "1" else Interaction.UPDATE


def _change(resource: JSONObject, version: str | None, interaction: Interaction) -> ResourceChange:
    """A change carrying `resource`; for a delete, the resource is the version that was deleted."""
    resource_type, resource_id = str(resource["resourceType"]), str(resource["id"])
    if interaction is Interaction.DELETE:
        return ResourceChange(resource_type, resource_id, version, interaction, None, resource)
    return ResourceChange(resource_type, resource_id, version, interaction, resource)


def bundle_changes(bundle: JSONObject) -> list[PushedChange]:
    """The changes in a history, transaction or batch Bundle or a subscription notification."""
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise ValidationFailed([Problem("/entry", "entry must be a list")])
    notification = _is_notification(bundle.get("type"), entries)
    pushed: list[PushedChange] = []
    problems: list[Problem] = []
    for index in range(1 if notification else 0, len(entries)):
        try:
            found = _entry_change(entries[index], f"/entry/{index}")
        except BadEntry as bad:
            problems.append(bad.problem)
            continue
        if found is not None:
            pushed.append(found)
    if problems:
        detail = f"the Bundle was refused, nothing was stored: {_summary(problems)}"
        raise ValidationFailed(problems[:MAX_PROBLEMS], detail)
    newest_first = bundle.get("type") == "history" and not notification
    return _with_previous(_chronological(pushed, newest_first=newest_first))


def _summary(problems: list[Problem]) -> str:
    first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{first.pointer}: {first.detail}{more}"


def _is_notification(kind: Any, entries: list[Any]) -> bool:
    """R5 notifications by type; R4 backport and R4B ones by their status entry first."""
    if kind == "subscription-notification":
        return True
    if kind != "history" or not entries or not isinstance(entries[0], dict):
        return False
    first = entries[0].get("resource")
    if not isinstance(first, dict):
        return False
    return first.get("resourceType") == "SubscriptionStatus" or _is_status_parameters(first)


def _is_status_parameters(resource: JSONObject) -> bool:
    if resource.get("resourceType") != "Parameters":
        return False
    profiles = (resource.get("meta") or {}).get("profile") or []
    if any(_STATUS_PROFILE in str(profile) for profile in profiles):
        return True
    names = {p.get("name") for p in resource.get("parameter") or [] if isinstance(p, dict)}
    return {"subscription", "type"} <= names


def _entry_change(entry: Any, at: str) -> PushedChange | None:
    """The change one Bundle entry records; None for reads (GET, HEAD) in a batch."""
    if not isinstance(entry, dict):
        raise BadEntry(at, "each entry must be an object")
    request = _object(entry, "request", at)
    response = _object(entry, "response", at)
    method = _method(request.get("method"), at)
    if method in _READS:
        return None
    resource = _object(entry, "resource", at) or None
    if method == "PATCH":
        resource = None  # the entry holds the patch document, not the patched resource
    if resource is not None:
        _check_resource(resource, at + "/resource")
    elif method is None:
        raise BadEntry(at, "the entry has neither a resource nor a request")
    interaction = _METHODS[method] if method else _implied_interaction(resource or {})
    change = _entry_resource_change(entry, request, response, resource, interaction, at)
    return PushedChange(change, _moment(resource, response))


def _method(method: Any, at: str) -> str | None:
    """`request.method` upper-cased: a write, a read (GET, HEAD), or None when absent."""
    if method is None:
        return None
    upper = method.upper() if isinstance(method, str) else None
    if upper in _METHODS or upper in _READS:
        return upper
    raise BadEntry(f"{at}/request/method", f"{method!r} is not POST, PUT, PATCH or DELETE")


def _entry_resource_change(
    entry: JSONObject,
    request: JSONObject,
    response: JSONObject,
    resource: JSONObject | None,
    interaction: Interaction,
    at: str,
) -> ResourceChange:
    if resource is not None:
        version = _version_of(resource) or _etag_version(response.get("etag"))
        return _change(resource, version, interaction)
    resource_type, resource_id, url_version = _entry_identity(entry, request, at)
    version = _etag_version(response.get("etag")) or url_version
    return ResourceChange(resource_type, resource_id, version, interaction, None)


def _object(entry: JSONObject, key: str, at: str) -> JSONObject:
    value = entry.get(key, {})
    if not isinstance(value, dict):
        raise BadEntry(f"{at}/{key}", f"{key} must be an object")
    return value


def _entry_identity(entry: JSONObject, request: JSONObject, at: str) -> tuple[str, str, str | None]:
    """(type, id, version) of an entry without a resource, from `request.url` or `fullUrl`."""
    for pointer, url in (
        (f"{at}/request/url", request.get("url")),
        (f"{at}/fullUrl", entry.get("fullUrl")),
    ):
        if isinstance(url, str) and url and not url.startswith("urn:"):
            try:
                return _identity_from_url(url, pointer)
            except BadEntry:
                continue
    raise BadEntry(
        f"{at}/request/url",
        "cannot tell which resource changed: no Type/id in request.url or fullUrl",
    )


def _identity_from_url(url: str, pointer: str) -> tuple[str, str, str | None]:
    """`[base/]Type/id[/_history/version]` split into (type, id, version)."""
    parts = [part for part in url.split("?", 1)[0].split("/") if part]
    version = None
    if len(parts) >= 4 and parts[-2] == "_history":
        version, parts = parts[-1], parts[:-2]
    if len(parts) < 2 or not is_resource_type(parts[-2]) or not _ID.match(parts[-1]):
        raise BadEntry(pointer, f"{url!r} does not name a resource as Type/id")
    return parts[-2], parts[-1], version


def _check_resource(resource: JSONObject, at: str) -> None:
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise BadEntry(f"{at}/resourceType", "not a FHIR resource: resourceType is missing")
    if not is_resource_type(resource_type):
        raise BadEntry(f"{at}/resourceType", f"unknown resource type {resource_type!r}")
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not _ID.match(resource_id):
        detail = "the resource needs an id (1-64 of A-Z, a-z, 0-9, '-', '.')"
        raise BadEntry(f"{at}/id", detail)
    meta = resource.get("meta", {})
    if not isinstance(meta, dict) or not isinstance(meta.get("versionId", ""), str):
        raise BadEntry(f"{at}/meta", "meta must be an object and meta.versionId a string")


def _version_of(resource: JSONObject | None) -> str | None:
    if resource is None:
        return None
    version = (resource.get("meta") or {}).get("versionId")
    return version if isinstance(version, str) and version else None


def _etag_version(etag: Any) -> str | None:
    """`W/"3"` -> `3`."""
    if not isinstance(etag, str):
        return None
    found = _ETAG.match(etag.strip())
    return found.group(1) if found else None


def _moment(resource: JSONObject | None, response: JSONObject) -> datetime | None:
    text = (resource or {}).get("meta", {}).get("lastUpdated") or response.get("lastModified")
    return parse_instant(text)


def parse_instant(text: Any) -> datetime | None:
    """A FHIR instant with its time zone, or None when absent or not one."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def last_updated(resource: JSONObject | None) -> datetime | None:
    """`meta.lastUpdated` of a resource, when it is a valid instant."""
    meta = (resource or {}).get("meta")
    return parse_instant(meta.get("lastUpdated")) if isinstance(meta, dict) else None


def _chronological(pushed: list[PushedChange], *, newest_first: bool) -> list[PushedChange]:
    """Oldest first: `_history` lists newest first; times, when all are known, decide."""
    ordered = list(reversed(pushed)) if newest_first else list(pushed)
    if ordered and all(item.moment is not None for item in ordered):
        ordered.sort(key=lambda item: (item.moment, _numeric(item.change.version_id)))
    return ordered


def _numeric(version: str | None) -> int:
    return int(version) if version is not None and version.isdigit() else 0


def _with_previous(pushed: list[PushedChange]) -> list[PushedChange]:
    """Each change gets the latest earlier body of the same resource as `previous`."""
    latest: dict[str, JSONObject] = {}
    linked = []
    for item in pushed:
        change = item.change
        reference = change.reference
        earlier = latest.get(reference)
        if earlier is not None and change.previous is None:
            item = PushedChange(dataclasses.replace(change, previous=earlier), item.moment)
        linked.append(item)
        if change.resource is not None:
            latest[reference] = change.resource
        elif change.interaction is Interaction.DELETE:
            latest.pop(reference, None)
    return linked

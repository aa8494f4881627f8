"""Subscriptions to submit, FHIR validation, and calls on the `/fhir` API for tests."""

from __future__ import annotations

import importlib
import json
from typing import Any

from tests.integration.conftest import Api

BASE = "http://127.0.0.1:8080"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
MEDPLUM = "https://medplum.com/fhir/StructureDefinition/"
FHIR_JSON = "application/fhir+json"


def topic(name: str) -> str:
    return f"{BASE}/fhir/SubscriptionTopic/{name}"


def fhir_valid(resource: dict[str, Any], version: str = "R4") -> None:
    """Validate with fhir.resources: R4B models stand in for R4, default models are R5."""
    name = resource["resourceType"]
    package = "fhir.resources" if version == "R5" else "fhir.resources.R4B"
    model = getattr(importlib.import_module(f"{package}.{name.lower()}"), name)
    model.model_validate(resource)


def r4(url: str, criteria: str = "Encounter?status=finished", **channel: Any) -> dict[str, Any]:
    extensions = channel.pop("extension", [])
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "watch encounters",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": url, **channel},
        **({"extension": extensions} if extensions else {}),
    }


def backport(
    url: str,
    name: str = "encounter.updated",
    *,
    content: str = "full-resource",
    filters: tuple[str, ...] = (),
    heartbeat: int | None = None,
    headers: tuple[str, ...] = (),
    payload: str = FHIR_JSON,
) -> dict[str, Any]:
    channel_extensions = [
        {"url": BACKPORT + "backport-timeout", "valueUnsignedInt": 20},
        {"url": BACKPORT + "backport-max-count", "valuePositiveInt": 5},
    ]
    if heartbeat is not None:
        channel_extensions.append(
            {"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": heartbeat}
        )
    channel: dict[str, Any] = {
        "extension": channel_extensions,
        "type": "rest-hook",
        "endpoint": url,
        "payload": payload,
        "_payload": {
            "extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": content}]
        },
    }
    if headers:
        channel["header"] = list(headers)
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [BACKPORT + "backport-subscription"]},
        "status": "requested",
        "reason": "topic-based",
        "criteria": topic(name),
        "channel": channel,
    }
    if filters:
        resource["_criteria"] = {
            "extension": [
                {"url": BACKPORT + "backport-filter-criteria", "valueString": text}
                for text in filters
            ]
        }
    return resource


def r5(url: str, name: str = "encounter.updated", content: str = "id-only") -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "topic": topic(name),
        "channelType": {
            "system": "http://terminology.hl7.org/CodeSystem/subscription-channel-type",
            "code": "rest-hook",
        },
        "endpoint": url,
        "contentType": FHIR_JSON,
        "content": content,
        "parameter": [{"name": "X-Partner", "value": "p: 1"}],
    }


def encounter(
    resource_id: str = "enc-1", version: int = 1, status: str = "finished"
) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": resource_id,
        "meta": {"versionId": str(version)},
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
    }


async def fhir(api: Api, method: str, path: str, key: str, body: Any = None) -> Any:
    """Call `/fhir`; returns the response (body sent as FHIR JSON)."""
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs["data"] = body if isinstance(body, (bytes, str)) else json.dumps(body)
        kwargs["headers"] = {"Content-Type": FHIR_JSON}
    return await api.call(method, path, key, **kwargs)


async def create(api: Api, key: str, resource: dict[str, Any]) -> dict[str, Any]:
    response = await fhir(api, "POST", "/fhir/Subscription", key, resource)
    assert response.status_code == 201, await response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    body: dict[str, Any] = await response.get_json()
    return body


async def push(api: Api, source: str, resource: dict[str, Any], interaction: str = "") -> None:
    headers = {"Content-Type": FHIR_JSON}
    if interaction:
        headers["X-Tidings-Interaction"] = interaction
    response = await api.call(
        "POST", "/v1/ingest/fhir", source, data=json.dumps(resource), headers=headers
    )
    assert response.status_code == 202, await response.get_data(as_text=True)

"""Reading event catalog files (TOML or JSON) into raw entries, before they are compiled.

A file holds `event_types`, a list of entries, and may hold `resource_events`, a template the
loader expands into `<resource>.created|updated|deleted` for every FHIR R4 resource type. A JSON
file may also be a bare list of entries.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.fhir.resource_types import RESOURCE_TYPES

SHIPPED_CATALOGS = Path(__file__).resolve().parent.parent / "catalogs"
CATALOG_SUFFIXES = (".toml", ".json")
PAST_TENSE = {"create": "created", "update": "updated", "delete": "deleted"}
_FILE_KEYS = frozenset({"event_types", "resource_events"})
_TEMPLATE_KEYS = frozenset({"interactions", "payload_format", "description"})


class CatalogError(ValueError):
    """A catalog file cannot be used; the message names the file, the entry and the reason."""

    def __init__(self, path: Path, entry: str | None, reason: str) -> None:
        where = f"{path}: event type {entry!r}" if entry is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.entry = entry
        self.reason = reason


@dataclass(frozen=True)
class CatalogEntry:
    """One event type as written in a file: its fields not yet checked."""

    path: Path
    label: str
    fields: Mapping[str, Any]


def catalog_files(paths: Sequence[Path]) -> list[Path]:
    """The shipped catalog files, then each extra file or every catalog file in each folder."""
    files = _folder_files(SHIPPED_CATALOGS)
    for path in paths:
        if path.is_dir():
            files += _folder_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise CatalogError(path, None, "no such file or folder")
    return files


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in CATALOG_SUFFIXES and p.is_file())


def read_entries(path: Path) -> list[CatalogEntry]:
    """The raw entries of one catalog file, with `resource_events` expanded."""
    document = _parse(path)
    if isinstance(document, list):
        document = {"event_types": document}
    if not isinstance(document, dict):
        raise CatalogError(path, None, "the file must hold a table (object) or a list of entries")
    unknown = sorted(set(document) - _FILE_KEYS)
    if unknown:
        raise CatalogError(path, None, f"unknown top-level key(s): {', '.join(unknown)}")
    entries = list(_listed_entries(path, document.get("event_types", [])))
    if "resource_events" in document:
        entries += _resource_entries(path, document["resource_events"])
    return entries


def _parse(path: Path) -> Any:
    if path.suffix not in CATALOG_SUFFIXES:
        raise CatalogError(path, None, "a catalog file must end in .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(path, None, f"cannot read: {exc}") from exc
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(path, None, f"invalid TOML: {exc}") from exc
    except json.JSONDecodeError as exc:
        reason = f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        raise CatalogError(path, None, reason) from exc


def _listed_entries(path: Path, listed: Any) -> Iterator[CatalogEntry]:
    if not isinstance(listed, list):
        raise CatalogError(path, None, "event_types must be a list of entries")
    for number, fields in enumerate(listed, start=1):
        name = fields.get("name") if isinstance(fields, dict) else None
        label = name if isinstance(name, str) and name else f"entry #{number}"
        if not isinstance(fields, dict):
            raise CatalogError(path, label, "an entry must be a table (object)")
        yield CatalogEntry(path, label, fields)


def _resource_entries(path: Path, template: Any) -> list[CatalogEntry]:
    label = "resource_events"
    if not isinstance(template, dict):
        raise CatalogError(path, label, "resource_events must be a table (object)")
    unknown = sorted(set(template) - _TEMPLATE_KEYS)
    if unknown:
        raise CatalogError(path, label, f"unknown field(s): {', '.join(unknown)}")
    interactions = template.get("interactions", list(PAST_TENSE))
    if not isinstance(interactions, list) or not all(i in PAST_TENSE for i in interactions):
        allowed = ", ".join(PAST_TENSE)
        raise CatalogError(path, label, f"interactions must be a list of: {allowed}")
    return [
        _resource_entry(path, template, resource, interaction)
        for resource in RESOURCE_TYPES
        for interaction in interactions
    ]


def _resource_entry(
    path: Path, template: Mapping[str, Any], resource: str, interaction: str
) -> CatalogEntry:
    past = PAST_TENSE[interaction]
    name = f"{resource.lower()}.{past}"
    description = str(template.get("description", "A {resource} resource was {past}."))
    fields: dict[str, Any] = {
        "name": name,
        "description": description.replace("{resource}", resource).replace("{past}", past),
        "triggers": [{"resource": resource, "interactions": [interaction]}],
        "example": {"resourceType": resource, "id": "example"},
    }
    if "payload_format" in template:
        fields["payload_format"] = template["payload_format"]
    return CatalogEntry(path, name, fields)

"""The event catalog: shipped types, trigger evaluation, data schemas and broken files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.domain.catalog import Catalog, CatalogError, load_catalog
from app.domain.models import Interaction, PayloadFormat, ResourceChange
from app.fhir.resource_types import RESOURCE_TYPES

TRIGGERS_TOML = """
[[event_types]]
name = "encounter.finished"
[[event_types.triggers]]
resource = "Encounter"
interactions = ["update"]
criteria = "Encounter?status=finished"
previous_criteria = "Encounter?status=in-progress"

[[event_types]]
name = "encounter.status_changed"
[[event_types.triggers]]
resource = "Encounter"
interactions = ["update"]
fhirpath = "%previous.status != %current.status"

[[event_types]]
name = "encounter.planned"
[[event_types.triggers]]
resource = "Encounter"
interactions = ["create", "update"]
criteria = "Encounter?status=planned"
[[event_types.triggers]]
resource = "Encounter"
interactions = ["delete"]

[[event_types]]
name = "observation.any"
triggers = [{ resource = "Observation", interactions = ["create", "update", "delete"] }]
"""


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog([])


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    path = tmp_path_factory.mktemp("catalogs") / "custom.toml"
    path.write_text(TRIGGERS_TOML)
    return load_catalog([path])


def encounter(status: str, resource_id: str = "e1") -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": resource_id, "status": status, "class": {}}


def change(
    interaction: Interaction,
    current: dict[str, Any] | None,
    previous: dict[str, Any] | None = None,
    resource_type: str = "Encounter",
) -> ResourceChange:
    return ResourceChange(resource_type, "e1", "2", interaction, current, previous)


@pytest.mark.parametrize(
    ("name", "payload_format"),
    [
        ("user-delete-completed", PayloadFormat.MESSAGE_HEADER),
        ("data-export-completed", PayloadFormat.MESSAGE_HEADER),
        ("patient_flow.completed", PayloadFormat.ENVELOPE),
        ("connection.token_refresh_failed", PayloadFormat.ENVELOPE),
        ("records.sync.completed", PayloadFormat.ENVELOPE),
        ("records.sync.failed", PayloadFormat.ENVELOPE),
        ("ping", PayloadFormat.ENVELOPE),
        ("endpoint.disabled", PayloadFormat.ENVELOPE),
        ("endpoint.enabled", PayloadFormat.ENVELOPE),
        ("delivery.failed", PayloadFormat.ENVELOPE),
        ("encounter.created", PayloadFormat.ENVELOPE),
        ("medicationrequest.updated", PayloadFormat.ENVELOPE),
        ("patient.deleted", PayloadFormat.ENVELOPE),
    ],
)
def test_shipped_catalog_has(shipped: Catalog, name: str, payload_format: PayloadFormat) -> None:
    event_type = shipped.get(name)
    assert event_type is not None
    assert event_type.payload_format is payload_format
    assert event_type.description


def test_resource_events_cover_every_resource_type_and_interaction(shipped: Catalog) -> None:
    for resource_type in RESOURCE_TYPES:
        for interaction, past in [
            ("create", "created"),
            ("update", "updated"),
            ("delete", "deleted"),
        ]:
            event_type = shipped.get(f"{resource_type.lower()}.{past}")
            assert event_type is not None
            (trigger,) = event_type.triggers
            assert trigger.resource == resource_type
            assert trigger.interactions == {Interaction(interaction)}
    assert len(shipped) == 3 * len(RESOURCE_TYPES) + 12


def test_iteration_and_names_are_in_name_order(shipped: Catalog) -> None:
    names = [event_type.name for event_type in shipped]
    assert names == sorted(names) == list(shipped.names())
    assert shipped.get("no.such.type") is None
    assert "ping" in shipped


def test_names_under_prefix(shipped: Catalog) -> None:
    assert shipped.names_under("records") == ("records.sync.completed", "records.sync.failed")
    assert shipped.names_under("records.sync.failed") == ()
    assert shipped.names_under("record") == ()


@pytest.mark.parametrize(
    ("interaction", "current", "previous", "expected"),
    [
        (
            Interaction.CREATE,
            encounter("planned"),
            None,
            ["encounter.created", "encounter.planned"],
        ),
        (
            Interaction.UPDATE,
            encounter("finished"),
            encounter("in-progress"),
            ["encounter.finished", "encounter.status_changed", "encounter.updated"],
        ),
        # with no previous version, previous_criteria cannot match and %previous is empty
        (Interaction.UPDATE, encounter("finished"), None, ["encounter.updated"]),
        (
            Interaction.UPDATE,
            encounter("finished"),
            encounter("planned"),
            ["encounter.status_changed", "encounter.updated"],
        ),
        (
            Interaction.UPDATE,
            encounter("planned"),
            encounter("planned"),
            ["encounter.planned", "encounter.updated"],
        ),
        (
            Interaction.DELETE,
            None,
            encounter("planned"),
            ["encounter.deleted", "encounter.planned"],
        ),
        (Interaction.CREATE, encounter("arrived"), None, ["encounter.created"]),
    ],
)
def test_types_for_change(
    custom: Catalog,
    interaction: Interaction,
    current: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    expected: list[str],
) -> None:
    fired = custom.types_for_change(change(interaction, current, previous))
    assert [event_type.name for event_type in fired] == expected


def test_criteria_never_match_a_missing_current_version(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[event_types]]\nname = "enc.gone"\n'
        'triggers = [{ resource = "Encounter", interactions = ["delete"], '
        'criteria = "Encounter?status=planned" }]\n'
    )
    catalog = load_catalog([path])
    deleted = change(Interaction.DELETE, None, encounter("planned"))
    assert "enc.gone" not in [t.name for t in catalog.types_for_change(deleted)]


def test_other_resource_types_do_not_fire(custom: Catalog) -> None:
    observation = {"resourceType": "Observation", "id": "o1", "status": "final"}
    fired = custom.types_for_change(change(Interaction.CREATE, observation, None, "Observation"))
    assert [event_type.name for event_type in fired] == ["observation.any", "observation.created"]


@pytest.mark.parametrize(
    ("name", "needs_previous"),
    [
        ("encounter.finished", True),
        ("encounter.status_changed", True),
        ("encounter.planned", False),
        ("encounter.created", False),
    ],
)
def test_needs_previous(custom: Catalog, name: str, needs_previous: bool) -> None:
    event_type = custom.get(name)
    assert event_type is not None
    assert event_type.needs_previous is needs_previous


def test_catalog_needs_previous_by_resource_type(custom: Catalog, shipped: Catalog) -> None:
    assert custom.needs_previous("Encounter")
    assert not custom.needs_previous("Observation")
    assert not shipped.needs_previous("Encounter")


def test_focus_defaults_to_the_resource_itself(shipped: Catalog) -> None:
    event_type = shipped.get("encounter.updated")
    assert event_type is not None
    assert event_type.focus_for_change(change(Interaction.UPDATE, encounter("planned"))) == (
        "Encounter/e1"
    )
    assert event_type.focus_for_data({"x": 1}) is None


def test_focus_expression_over_published_data(shipped: Catalog) -> None:
    event_type = shipped.get("user-delete-completed")
    assert event_type is not None
    assert event_type.focus_for_data({"person_id": "p-1"}) == "Person/p-1"
    assert event_type.focus_for_data({}) is None


@pytest.mark.parametrize(
    ("name", "data", "pointers"),
    [
        ("user-delete-completed", {"person_id": "p1", "external_identifier": {"value": "u1"}}, []),
        ("user-delete-completed", {}, ["/data/external_identifier", "/data/person_id"]),
        (
            "user-delete-completed",
            {"person_id": 7, "external_identifier": {"system": "s"}},
            ["/data/external_identifier/value", "/data/person_id"],
        ),
        (
            "data-export-completed",
            {"person_id": "p1", "external_identifier": {"value": "u1"}},
            ["/data/download_url"],
        ),
        (
            "data-export-completed",
            {"person_id": "p1", "external_identifier": {"value": "u1"}, "download_url": "ftp x"},
            ["/data/download_url"],
        ),
        (
            "patient_flow.completed",
            {
                "id": "f1",
                "patient": "Patient/1",
                "status": "completed",
                "completed_at": "2025-06-01T12:00:00Z",
            },
            [],
        ),
        (
            "patient_flow.completed",
            {
                "id": "f1",
                "patient": "Patient/1",
                "status": "completed",
                "completed_at": "2025-06-01T12:00:00Z",
                "steps": [{"name": "x"}],
            },
            ["/data/steps/0/status"],
        ),
        ("patient_flow.completed", [], ["/data"]),
        *(
            (
                "patient_flow.completed",
                {"id": "f1", "patient": "Patient/1", "status": "completed", "completed_at": bad},
                ["/data/completed_at"],
            )
            for bad in [
                "nope",
                "2025-06-01",
                "2025-06-01 12:00:00Z",
                "2025-06-31T12:00:00Z",
                "2025-06-01T12:00:00Z\n",  # the draft's own check lets a final line break through
            ]
        ),
        (
            "user-delete-completed",
            {"person_id": "p1", "external_identifier": {"value": "u1"}, "deleted_at": "nope"},
            ["/data/deleted_at"],
        ),
        ("records.sync.failed", {"connection_id": "c", "patient": "Patient/1"}, ["/data/reason"]),
        ("encounter.created", {"anything": True}, []),
    ],
)
def test_validate_data(shipped: Catalog, name: str, data: Any, pointers: list[str]) -> None:
    event_type = shipped.get(name)
    assert event_type is not None
    problems = event_type.validate_data(data, at="/data")
    assert [problem.pointer for problem in problems] == pointers
    assert all(problem.detail for problem in problems)


def test_every_shipped_example_is_valid(shipped: Catalog) -> None:
    for event_type in shipped:
        if event_type.example is not None:
            assert event_type.validate_data(event_type.example) == []


def test_extra_folder_and_json_files_load(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"name": "lab.result_ready"}]))
    (tmp_path / "b.json").write_text(json.dumps({"event_types": [{"name": "lab.cancelled"}]}))
    (tmp_path / "notes.txt").write_text("not a catalog")
    catalog = load_catalog([tmp_path])
    assert catalog.names_under("lab") == ("lab.cancelled", "lab.result_ready")
    assert "ping" in catalog


X = '[[event_types]]\nname = "x"\n'
BROKEN: list[tuple[str, str, str | None, str]] = [
    ("bad.toml", X + "description = \n", None, "invalid TOML"),
    ("bad.toml", X + "description = \n", None, "line 3"),
    ("bad.json", '{"event_types": [\n{"name": "x",}\n]}', None, "invalid JSON"),
    ("bad.json", '{"event_types": [\n{"name": "x",}\n]}', None, "line 2"),
    ("c.toml", '[[event_types]]\ndescription = "nameless"\n', "entry #1", "missing name"),
    ("c.toml", '[[event_types]]\nname = "a b"\n', "a b", "invalid name"),
    ("c.toml", "[[event_types]]\nname = 7\n", "entry #1", "invalid name"),
    ("c.toml", '[[event_types]]\nname = "ping"\n', "ping", "duplicate name"),
    ("c.toml", X + '[[event_types]]\nname = "x"\n', "x", "duplicate name"),
    (
        "c.toml",
        X + 'payload_format = "xml"\n',
        "x",
        "unknown payload_format 'xml'",
    ),
    ("c.toml", X + 'colour = "red"\n', "x", "unknown field(s): colour"),
    (
        "c.toml",
        X + 'triggers = [{ resource = "Patient", interactions = ["read"] }]\n',
        "x",
        "unknown interaction 'read'",
    ),
    (
        "c.toml",
        X + 'triggers = [{ resource = "Patients", interactions = ["create"] }]\n',
        "x",
        "unknown resource type 'Patients'",
    ),
    (
        "c.toml",
        X + 'triggers = [{ resource = "Patient", criteria = "Patient?nosuchparam=1" }]\n',
        "x",
        "triggers[0]: invalid criteria",
    ),
    (
        "c.toml",
        X
        + 'triggers = [{ resource = "Patient", previous_criteria = "Observation?status=final" }]\n',
        "x",
        "previous_criteria",
    ),
    (
        "c.toml",
        X + 'triggers = [{ resource = "Patient", fhirpath = "name.where(" }]\n',
        "x",
        "invalid FHIRPath in fhirpath",
    ),
    (
        "c.toml",
        X + 'focus = "nosuchfn()"\n',
        "x",
        "invalid FHIRPath in focus",
    ),
    (
        "c.toml",
        X + 'extensions = { "https://e.org/x" = "a.(" }\n',
        "x",
        "invalid FHIRPath in extensions",
    ),
    (
        "c.toml",
        X + 'extensions = { "nourl" = "a" }\n',
        "x",
        "not an absolute URL",
    ),
    ("c.toml", X + 'data_schema = { type = "objekt" }\n', "x", "objekt"),
    (
        "c.toml",
        X + 'data_schema = { type = "object", required = ["a"] }\nexample = {}\n',
        "x",
        "example does not match data_schema",
    ),
    (
        "c.toml",
        '[resource_events]\ninteractions = ["create", "purge"]\n',
        "resource_events",
        "interactions",
    ),
    ("c.toml", "[[something_else]]\n", None, "unknown top-level key(s): something_else"),
    ("c.yaml", "event_types: []\n", None, "must end in .toml or .json"),
]


@pytest.mark.parametrize(("filename", "text", "entry", "reason"), BROKEN)
def test_broken_catalog_file_names_file_entry_and_reason(
    tmp_path: Path, filename: str, text: str, entry: str | None, reason: str
) -> None:
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(CatalogError) as raised:
        load_catalog([path])
    message = str(raised.value)
    assert str(path) in message
    assert reason in message
    assert raised.value.entry == entry
    if entry is not None:
        assert repr(entry) in message


def test_missing_extra_path(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such file or folder"):
        load_catalog([tmp_path / "nope.toml"])

from __future__ import annotations

from typing import Any

import pytest

from app.fhir.fhirpath import FhirPathError, compile_expression

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat-1",
    "meta": {"versionId": "2", "lastUpdated": "2024-03-05T10:15:30.123Z"},
    "active": True,
    "gender": "female",
    "birthDate": "1987-06-15",
    "name": [
        {"use": "official", "family": "Muñoz", "given": ["Zoë", "Ann"]},
        {"use": "nickname", "given": ["Zee"]},
    ],
    "identifier": [{"system": "http://hospital.example/mrn", "value": "MRN-0042"}],
}

PREVIOUS_PATIENT: dict[str, Any] = {**PATIENT, "active": False, "gender": "unknown"}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs-1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
    "subject": {"reference": "Patient/pat-1"},
    "effectiveDateTime": "2024-03-05T09:30:00+01:00",
    "valueQuantity": {
        "value": 72.5,
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    },
}

ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "status": "in-progress",
    "subject": {"reference": "Patient/pat-1"},
    "period": {"start": "2024-03-05T09:00:00Z"},
}


@pytest.mark.parametrize(
    ("expression", "resource", "expected"),
    [
        ("Patient.gender", PATIENT, ["female"]),
        ("Patient.name.where(use = 'official').family", PATIENT, ["Muñoz"]),
        ("Patient.name.given", PATIENT, ["Zoë", "Ann", "Zee"]),
        ("Patient.name.given.first()", PATIENT, ["Zoë"]),
        ("Patient.name.count()", PATIENT, [2]),
        ("Patient.identifier.where(system = 'http://hospital.example/mrn').value", PATIENT,
         ["MRN-0042"]),
        ("Patient.birthDate > @1980-01-01", PATIENT, [True]),
        ("Patient.deceased.exists()", PATIENT, [False]),
        ("Patient.telecom", PATIENT, []),
        ("Observation.value as Quantity", OBSERVATION,
         [{"value": 72.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}]),
        ("Observation.value.value", OBSERVATION, [72.5]),
        ("Observation.value.value > 70", OBSERVATION, [True]),
        ("Observation.effective", OBSERVATION, ["2024-03-05T09:30:00+01:00"]),
        ("Observation.code.coding.where(system = 'http://loinc.org').code", OBSERVATION,
         ["29463-7"]),
        ("Observation.subject.reference.startsWith('Patient/')", OBSERVATION, [True]),
        ("Encounter.period.end.empty()", ENCOUNTER, [True]),
        ("%ucum", PATIENT, ["http://unitsofmeasure.org"]),
        ("%resource.id", PATIENT, ["pat-1"]),
    ],
)  # fmt: skip
def test_evaluate_returns_the_result_collection(
    expression: str, resource: dict[str, Any], expected: list[Any]
) -> None:
    assert compile_expression(expression).evaluate(resource) == expected


@pytest.mark.parametrize(
    ("expression", "previous", "expected"),
    [
        ("%previous.active", PREVIOUS_PATIENT, [False]),
        ("%current.active", PREVIOUS_PATIENT, [True]),
        ("%previous.active != %current.active", PREVIOUS_PATIENT, [True]),
        ("%previous.gender = 'unknown' and %current.gender = 'female'", PREVIOUS_PATIENT, [True]),
        ("%previous.active != %current.active", PATIENT, [False]),
        ("%previous.active", None, []),
        ("%previous.exists()", None, [False]),
        ("%previous.exists()", PREVIOUS_PATIENT, [True]),
    ],
)
def test_previous_and_current_versions(
    expression: str, previous: dict[str, Any] | None, expected: list[Any]
) -> None:
    assert compile_expression(expression).evaluate(PATIENT, previous=previous) == expected


def test_current_defaults_to_the_resource_and_can_be_given() -> None:
    expression = compile_expression("%current.id")
    assert expression.evaluate(PATIENT) == ["pat-1"]
    assert expression.evaluate(PATIENT, current={"resourceType": "Patient", "id": "x"}) == ["x"]


@pytest.mark.parametrize(
    ("expression", "previous", "expected"),
    [
        ("Patient.active", None, True),
        ("Patient.active = false", None, False),
        ("Patient.gender = 'female'", None, True),
        ("Patient.gender = 'male'", None, False),
        ("Patient.telecom", None, False),  # empty
        ("Patient.name.family", None, True),  # non-empty, not boolean
        ("Patient.name.given", None, True),  # several items
        ("Patient.birthDate < @1980-01-01", None, False),
        ("%previous.active != %current.active", PREVIOUS_PATIENT, True),
        ("%previous.active != %current.active", None, False),  # no previous: empty
        ("%previous.active = false and %current.active = true", PREVIOUS_PATIENT, True),
        ("Patient.gender + 1", None, False),  # fails at evaluation: never true
        ("Patient.name.single()", None, False),  # fails: two names
    ],
)
def test_is_true(expression: str, previous: dict[str, Any] | None, expected: bool) -> None:
    assert compile_expression(expression).is_true(PATIENT, previous=previous) is expected


def test_evaluation_failure_raises_fhirpath_error() -> None:
    with pytest.raises(FhirPathError, match=r"Patient\.gender \+ 1. failed"):
        compile_expression("Patient.gender + 1").evaluate(PATIENT)


def test_is_true_never_fails_open_on_a_malformed_resource() -> None:
    resource: dict[str, Any] = {"resourceType": "Patient", "name": "not a list", "active": "yes"}
    assert compile_expression("Patient.active = true").is_true(resource) is False


def test_compiled_expression_is_reusable_across_resources() -> None:
    expression = compile_expression("Patient.gender = 'female'")
    assert expression.is_true(PATIENT)
    assert not expression.is_true({**PATIENT, "gender": "male"})
    assert expression.is_true(PATIENT)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("Patient.name.where(", "invalid FHIRPath 'Patient.name.where(' at column 20"),
        ("Patient..name", "invalid FHIRPath 'Patient..name'"),
        ("1 +", "invalid FHIRPath '1 +'"),
        ("Patient.name $ x", "invalid FHIRPath"),
        ("Patient.name)", "invalid FHIRPath"),
        ("Patient.name.bogus()", "unknown FHIRPath function bogus()"),
        ("Patient.name.where()", "where() takes 1 argument, not 0"),
        ("Patient.name.first(1)", "first() takes 0 arguments, not 1"),
        ("iif(true)", "iif() takes 2 or 3 arguments, not 1"),
        ("Observation.subject.resolve()", "resolve() is not supported"),
        ("Observation.subject.where(resolve() is Patient)", "resolve() is not supported"),
        ("%prevoius.active", "unknown environment variable %prevoius"),
    ],
)
def test_compile_refuses_bad_expressions(expression: str, message: str) -> None:
    with pytest.raises(FhirPathError) as raised:
        compile_expression(expression)
    assert message in str(raised.value)


def test_fhirpath_error_is_a_value_error() -> None:
    assert issubclass(FhirPathError, ValueError)

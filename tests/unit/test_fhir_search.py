from __future__ import annotations

from typing import Any

import pytest

from app.fhir.resource_types import RESOURCE_TYPES, is_resource_type
from app.fhir.search import Criteria, CriteriaError, parse_criteria

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat-1",
    "meta": {
        "versionId": "2",
        "lastUpdated": "2024-03-05T10:15:30.123Z",
        "tag": [{"system": "http://tidings.example/tags", "code": "vip"}],
        "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
        "security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
        ],
    },
    "identifier": [{"system": "http://hospital.example/mrn", "value": "MRN-0042"}],
    "active": True,
    "name": [{"use": "official", "family": "Muñoz", "given": ["Zoë", "Ann"], "prefix": ["Dr."]}],
    "telecom": [
        {"system": "phone", "value": "+1-555-0100", "use": "home"},
        {"system": "email", "value": "zoe@example.org"},
    ],
    "gender": "female",
    "birthDate": "1987-06-15",
    "address": [
        {
            "line": ["12 Rue de l'Église"],
            "city": "Montréal",
            "state": "QC",
            "postalCode": "H2X 1Y4",
            "country": "CA",
        }
    ],
    "generalPractitioner": [{"reference": "Practitioner/dr-7"}],
    "managingOrganization": {"reference": "https://fhir.example.org/r4/Organization/org-1"},
}

PATIENT_WITHOUT_GENDER: dict[str, Any] = {"resourceType": "Patient", "id": "pat-2"}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs-1",
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                    "display": "Vital Signs",
                }
            ]
        }
    ],
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}],
        "text": "Body weight",
    },
    "subject": {"reference": "Patient/pat-1/_history/2"},
    "encounter": {"reference": "Encounter/enc-1"},
    "effectiveDateTime": "2024-03-05T09:30:00+01:00",
    "issued": "2024-03-05T08:45:00.000Z",
    "valueQuantity": {
        "value": 72.5,
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    },
}

# 00:30 in Paris on 5 March is 23:30 UTC on 4 March.
LATE_OBSERVATION: dict[str, Any] = {**OBSERVATION, "effectiveDateTime": "2024-03-05T00:30:00+01:00"}

ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    "subject": {"reference": "Patient/pat-1", "display": "Zoë Muñoz"},
    "participant": [{"individual": {"reference": "Practitioner/dr-7"}}],
    "period": {"start": "2024-03-05T09:00:00Z", "end": "2024-03-05T10:30:00Z"},
    "serviceProvider": {"reference": "Organization/org-1"},
}

ONGOING_ENCOUNTER: dict[str, Any] = {
    **ENCOUNTER,
    "status": "in-progress",
    "period": {"start": "2024-03-05T09:00:00Z"},
}

CONDITION: dict[str, Any] = {
    "resourceType": "Condition",
    "id": "cond-1",
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active",
            }
        ]
    },
    "code": {
        "coding": [
            {
                "system": "http://snomed.info/sct",
                "code": "44054006",
                "display": "Diabetes mellitus type 2",
            }
        ],
        "text": "Type 2 diabetes",
    },
    "subject": {"reference": "Group/cohort-3"},
    "onsetDateTime": "2019",
    "recordedDate": "2019-04-02",
}

RISK_ASSESSMENT: dict[str, Any] = {
    "resourceType": "RiskAssessment",
    "id": "risk-1",
    "status": "final",
    "subject": {"reference": "Patient/pat-1"},
    "prediction": [{"probabilityDecimal": 0.25}, {"probabilityDecimal": 0.8}],
}

MOLECULAR_SEQUENCE: dict[str, Any] = {
    "resourceType": "MolecularSequence",
    "id": "seq-1",
    "type": "dna",
    "coordinateSystem": 0,
    "variant": [{"start": 128, "end": 129}],
}

VALUE_SET: dict[str, Any] = {
    "resourceType": "ValueSet",
    "id": "colors",
    "url": "http://example.org/fhir/ValueSet/colors",
    "status": "active",
}


def assert_matches(criteria: str, resource: dict[str, Any], expected: bool) -> None:
    assert parse_criteria(criteria).matches(resource) is expected, criteria


@pytest.mark.parametrize(
    ("criteria", "resource", "expected"),
    [
        ("Patient?gender=female", PATIENT, True),
        ("Patient?gender=male", PATIENT, False),
        ("Patient?gender=male,female", PATIENT, True),
        ("Patient?gender=female", PATIENT_WITHOUT_GENDER, False),
        ("Observation?code=http://loinc.org|29463-7", OBSERVATION, True),
        ("Observation?code=http://snomed.info/sct|29463-7", OBSERVATION, False),
        ("Observation?code=29463-7", OBSERVATION, True),
        ("Observation?code=8302-2", OBSERVATION, False),
        ("Observation?code=8302-2,29463-7", OBSERVATION, True),
        ("Observation?code=|29463-7", OBSERVATION, False),  # the coding has a system
        ("Observation?code=http://loinc.org|", OBSERVATION, True),
        ("Observation?code=http://snomed.info/sct|", OBSERVATION, False),
        ("Observation?code=http%3A%2F%2Floinc.org%7C29463-7", OBSERVATION, True),
        ("Observation?category=vital-signs", OBSERVATION, True),
        ("Observation?status=final", OBSERVATION, True),
        ("Observation?status=preliminary", OBSERVATION, False),
        ("Condition?clinical-status=active", CONDITION, True),
        ("Condition?code=http://snomed.info/sct|44054006", CONDITION, True),
        ("Encounter?class=http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB", ENCOUNTER, True),
        ("Encounter?class=IMP", ENCOUNTER, False),
        ("Patient?identifier=http://hospital.example/mrn|MRN-0042", PATIENT, True),
        ("Patient?identifier=MRN-0042", PATIENT, True),
        ("Patient?identifier=http://other.example/mrn|MRN-0042", PATIENT, False),
        ("Patient?identifier=http://hospital.example/mrn|", PATIENT, True),
        ("Patient?telecom=phone|+1-555-0100", PATIENT, True),
        ("Patient?telecom=email|+1-555-0100", PATIENT, False),
        ("Patient?email=zoe@example.org", PATIENT, True),
        ("Patient?phone=zoe@example.org", PATIENT, False),
        ("Patient?active=true", PATIENT, True),
        ("Patient?active=false", PATIENT, False),
        ("Patient?_id=pat-1", PATIENT, True),
        ("Patient?_id=pat-2", PATIENT, False),
        ("Patient?_id=pat-2,pat-1", PATIENT, True),
        ("Patient?_tag=http://tidings.example/tags|vip", PATIENT, True),
        ("Patient?_tag=http://tidings.example/tags|test", PATIENT, False),
        ("Patient?_security=R", PATIENT, True),
        ("Patient?_security=V", PATIENT, False),
    ],
)
def test_token(criteria: str, resource: dict[str, Any], expected: bool) -> None:
    assert_matches(criteria, resource, expected)


@pytest.mark.parametrize(
    ("criteria", "resource", "expected"),
    [
        ("Patient?gender:not=male", PATIENT, True),
        ("Patient?gender:not=female", PATIENT, False),
        ("Patient?gender:not=male,female", PATIENT, False),
        ("Patient?gender:not=male", PATIENT_WITHOUT_GENDER, True),
        ("Observation?code:not=http://loinc.org|29463-7", OBSERVATION, False),
        ("Observation?code:text=body", OBSERVATION, True),
        ("Observation?code:text=BODY WEI", OBSERVATION, True),
        ("Observation?code:text=weight", OBSERVATION, False),
        ("Condition?code:text=diabetes", CONDITION, True),  # the coding's display
        ("Condition?code:text=type 2", CONDITION, True),  # the concept's text
        ("Condition?code:text=asthma", CONDITION, False),
        ("Patient?gender:missing=false", PATIENT, True),
        ("Patient?gender:missing=true", PATIENT, False),
        ("Patient?gender:missing=true", PATIENT_WITHOUT_GENDER, True),
        ("Patient?gender:missing=false", PATIENT_WITHOUT_GENDER, False),
    ],
)
def test_token_modifiers(criteria: str, resource: dict[str, Any], expected: bool) -> None:
    assert_matches(criteria, resource, expected)


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("Patient?family=Muñoz", True),
        ("Patient?family=munoz", True),  # accents and case do not matter
        ("Patient?family=MUÑ", True),
        ("Patient?family=oz", False),  # starts-with, not contains
        ("Patient?family=Smith", False),
        ("Patient?family:contains=oz", True),
        ("Patient?family:contains=xyz", False),
        ("Patient?family:exact=Muñoz", True),
        ("Patient?family:exact=munoz", False),
        ("Patient?family:exact=Muño", False),
        ("Patient?given=zoe", True),
        ("Patient?given=ann", True),
        ("Patient?name=zoe", True),  # a given name
        ("Patient?name=dr", True),  # a prefix
        ("Patient?name=munoz", True),  # the family name
        ("Patient?name=Zoë%20Ann%20Muñoz", True),  # the full name
        ("Patient?name=smith,zoe", True),
        ("Patient?name=smith", False),
        ("Patient?address=montreal", True),
        ("Patient?address=12 rue de l'eglise", True),
        ("Patient?address=H2X", True),
        ("Patient?address=toronto", False),
        ("Patient?address-city=Mont", True),
        ("Patient?address-city=Québec", False),
        ("Patient?address-postalcode:exact=H2X 1Y4", True),
        ("Patient?address-country=CA", True),
        ("Patient?name:missing=false", True),
        ("Patient?name:missing=true", False),
    ],
)
def test_string(criteria: str, expected: bool) -> None:
    assert_matches(criteria, PATIENT, expected)


@pytest.mark.parametrize(
    ("criteria", "resource", "expected"),
    [
        ("Observation?subject=Patient/pat-1", OBSERVATION, True),  # the reference is versioned
        ("Observation?subject=Patient/pat-2", OBSERVATION, False),
        ("Observation?subject=pat-1", OBSERVATION, True),
        ("Observation?subject:Patient=pat-1", OBSERVATION, True),
        ("Observation?subject:Group=pat-1", OBSERVATION, False),
        ("Observation?subject:Patient=Patient/pat-1", OBSERVATION, True),
        ("Observation?patient=pat-1", OBSERVATION, True),
        ("Observation?patient=Patient/pat-1", OBSERVATION, True),
        ("Observation?subject=https://fhir.example.org/r4/Patient/pat-1", OBSERVATION, True),
        ("Observation?subject=https://fhir.example.org/r4/Patient/pat-9", OBSERVATION, False),
        ("Observation?encounter=Encounter/enc-1", OBSERVATION, True),
        ("Observation?patient:missing=false", OBSERVATION, True),
        ("Observation?performer:missing=true", OBSERVATION, True),
        ("Observation?subject=Patient/pat-2,Patient/pat-1", OBSERVATION, True),
        ("Condition?subject=Group/cohort-3", CONDITION, True),
        ("Condition?patient=cohort-3", CONDITION, False),  # the subject is a Group
        ("Condition?patient:missing=true", CONDITION, True),
        ("Condition?subject:missing=false", CONDITION, True),
        ("Encounter?participant=Practitioner/dr-7", ENCOUNTER, True),
        ("Encounter?practitioner=dr-7", ENCOUNTER, True),
        ("Encounter?practitioner=dr-8", ENCOUNTER, False),
        ("Encounter?service-provider=org-1", ENCOUNTER, True),
        ("Patient?general-practitioner=Practitioner/dr-7", PATIENT, True),
        ("Patient?general-practitioner=Organization/dr-7", PATIENT, False),
        ("Patient?organization=Organization/org-1", PATIENT, True),  # absolute in the resource
        ("Patient?organization=https://fhir.example.org/r4/Organization/org-1", PATIENT, True),
    ],
)
def test_reference(criteria: str, resource: dict[str, Any], expected: bool) -> None:
    assert_matches(criteria, resource, expected)


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("Patient?birthdate=1987", True),
        ("Patient?birthdate=1987-06", True),
        ("Patient?birthdate=1987-06-15", True),
        ("Patient?birthdate=eq1987-06-15", True),
        ("Patient?birthdate=1987-06-16", False),
        ("Patient?birthdate=1987-06-15T10:00:00Z", False),  # a day is not within one second
        ("Patient?birthdate=ne1987-06-16", True),
        ("Patient?birthdate=ne1987", False),
        ("Patient?birthdate=gt1987-01-01", True),
        ("Patient?birthdate=gt1987", False),
        ("Patient?birthdate=gt1987-06-15", False),
        ("Patient?birthdate=lt1988", True),
        ("Patient?birthdate=lt1987-06-15", False),
        ("Patient?birthdate=ge1987-06-15", True),
        ("Patient?birthdate=ge1987-06-16", False),
        ("Patient?birthdate=le1987-06-15", True),
        ("Patient?birthdate=le1987-06-14", False),
        ("Patient?birthdate=sa1987-06-14", True),
        ("Patient?birthdate=sa1987-06-15", False),
        ("Patient?birthdate=eb1987-06-16", True),
        ("Patient?birthdate=eb1987-06-15", False),
        ("Patient?birthdate=ap1987-06-16", True),
        ("Patient?birthdate=ap1987-06-20", False),
        ("Patient?birthdate=ge1980&birthdate=lt1990", True),
        ("Patient?birthdate=ge1980&birthdate=lt1985", False),
        ("Patient?birthdate=1990,1987", True),
        ("Patient?_lastUpdated=ge2024-03-05", True),
        ("Patient?_lastUpdated=lt2024-03-05", False),
        ("Patient?_lastUpdated=gt2024-03-05T10:15:29Z", True),
        ("Patient?_lastUpdated=gt2024-03-05T10:15:30Z", False),  # .123 is within that second
        ("Patient?_lastUpdated=2024-03-05T10:15:30Z", True),  # within that second
        ("Patient?death-date:missing=true", True),
    ],
)
def test_date_on_a_date(criteria: str, expected: bool) -> None:
    assert_matches(criteria, PATIENT, expected)


@pytest.mark.parametrize(
    ("criteria", "resource", "expected"),
    [
        ("Observation?date=2024-03-05T08:30:00Z", OBSERVATION, True),
        ("Observation?date=2024-03-05T09:30:00+01:00", OBSERVATION, True),
        ("Observation?date=2024-03-05T09:30:00%2B01:00", OBSERVATION, True),
        ("Observation?date=2024-03-05T03:30:00-05:00", OBSERVATION, True),
        ("Observation?date=2024-03-05T09:30:00Z", OBSERVATION, False),
        ("Observation?date=2024-03-05T08:30", OBSERVATION, True),  # minute precision, UTC
        ("Observation?date=lt2024-03-05T08:30:00Z", OBSERVATION, False),
        ("Observation?date=le2024-03-05T08:30:00Z", OBSERVATION, True),
        ("Observation?date=2024-03-05", OBSERVATION, True),
        ("Observation?date=2024-03-04", LATE_OBSERVATION, True),  # 23:30 UTC
        ("Observation?date=2024-03-05", LATE_OBSERVATION, False),
        ("Encounter?date=2024-03-05", ENCOUNTER, True),
        ("Encounter?date=2024-03-05T09:00:00Z", ENCOUNTER, False),  # the period is longer
        ("Encounter?date=gt2024-03-05T10:00:00Z", ENCOUNTER, True),
        ("Encounter?date=gt2024-03-05T11:00:00Z", ENCOUNTER, False),
        ("Encounter?date=lt2024-03-05T09:30:00Z", ENCOUNTER, True),
        ("Encounter?date=lt2024-03-05T09:00:00Z", ENCOUNTER, False),
        ("Encounter?date=sa2024-03-05T08:00:00Z", ENCOUNTER, True),
        ("Encounter?date=sa2024-03-05T09:30:00Z", ENCOUNTER, False),
        ("Encounter?date=eb2024-03-05T12:00:00Z", ENCOUNTER, True),
        ("Encounter?date=eb2024-03-05T10:00:00Z", ENCOUNTER, False),
        ("Encounter?date=ne2024-03-05", ENCOUNTER, False),
        ("Encounter?date=ap2024-03-06", ENCOUNTER, True),
        ("Encounter?date=ap2024-03-08", ENCOUNTER, False),
        ("Encounter?date=gt2030-01-01", ONGOING_ENCOUNTER, True),  # no end: still going
        ("Encounter?date=eb2030-01-01", ONGOING_ENCOUNTER, False),
        ("Encounter?date=2024-03-05", ONGOING_ENCOUNTER, False),
        ("Encounter?date=sa2024-03-04", ONGOING_ENCOUNTER, True),
        ("Condition?onset-date=2019", CONDITION, True),
        ("Condition?onset-date=2019-05", CONDITION, False),  # a year is not within a month
        ("Condition?onset-date=ap2019-05", CONDITION, True),
        ("Condition?recorded-date=lt2019-04-03", CONDITION, True),
    ],
)
def test_date_on_datetimes_and_periods(
    criteria: str, resource: dict[str, Any], expected: bool
) -> None:
    assert_matches(criteria, resource, expected)


@pytest.mark.parametrize(
    ("criteria", "resource", "expected"),
    [
        ("RiskAssessment?probability=0.25", RISK_ASSESSMENT, True),
        ("RiskAssessment?probability=0.3", RISK_ASSESSMENT, True),  # [0.25, 0.35)
        ("RiskAssessment?probability=0.4", RISK_ASSESSMENT, False),
        ("RiskAssessment?probability=0.2", RISK_ASSESSMENT, False),  # [0.15, 0.25) excludes it
        ("RiskAssessment?probability=gt0.9", RISK_ASSESSMENT, False),
        ("RiskAssessment?probability=gt0.5", RISK_ASSESSMENT, True),
        ("RiskAssessment?probability=lt0.25", RISK_ASSESSMENT, False),
        ("RiskAssessment?probability=le0.25", RISK_ASSESSMENT, True),
        ("RiskAssessment?probability=ge0.8", RISK_ASSESSMENT, True),
        ("RiskAssessment?probability=ge0.81", RISK_ASSESSMENT, False),
        ("RiskAssessment?probability=sa0.79", RISK_ASSESSMENT, True),
        ("RiskAssessment?probability=eb0.25", RISK_ASSESSMENT, False),
        ("RiskAssessment?probability=eb0.26", RISK_ASSESSMENT, True),
        ("RiskAssessment?probability=ap0.83", RISK_ASSESSMENT, True),
        ("RiskAssessment?probability=ap0.9", RISK_ASSESSMENT, False),
        ("MolecularSequence?variant-start=128", MOLECULAR_SEQUENCE, True),
        ("MolecularSequence?variant-start=1.28e2", MOLECULAR_SEQUENCE, True),
        ("MolecularSequence?variant-start=127", MOLECULAR_SEQUENCE, False),
        ("MolecularSequence?variant-start=ne127", MOLECULAR_SEQUENCE, True),
        ("MolecularSequence?variant-start=ne128", MOLECULAR_SEQUENCE, False),
        ("MolecularSequence?variant-start=128.0", MOLECULAR_SEQUENCE, True),
        ("MolecularSequence?variant-end:missing=false", MOLECULAR_SEQUENCE, True),
        ("MolecularSequence?window-start:missing=true", MOLECULAR_SEQUENCE, True),
    ],
)
def test_number(criteria: str, resource: dict[str, Any], expected: bool) -> None:
    assert_matches(criteria, resource, expected)


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("Observation?value-quantity=72.5", True),
        ("Observation?value-quantity=72.50", True),
        ("Observation?value-quantity=72", False),  # [71.5, 72.5)
        ("Observation?value-quantity=73", True),  # [72.5, 73.5)
        ("Observation?value-quantity=7.25e1", True),
        ("Observation?value-quantity=ap70", True),
        ("Observation?value-quantity=ap60", False),
        ("Observation?value-quantity=gt70|http://unitsofmeasure.org|kg", True),
        ("Observation?value-quantity=gt70|http://unitsofmeasure.org|g", False),
        ("Observation?value-quantity=gt70|http://snomed.info/sct|kg", False),
        ("Observation?value-quantity=gt80|http://unitsofmeasure.org|kg", False),
        ("Observation?value-quantity=72.5||kg", True),
        ("Observation?value-quantity=72.5||lb", False),
        ("Observation?value-quantity=lt72.5", False),
        ("Observation?value-quantity=le72.5", True),
        ("Observation?value-quantity=ne72.5", False),
        ("Observation?value-quantity=ne72", True),
        ("Observation?value-quantity=eb100||kg", True),
        ("Observation?value-quantity=sa100||kg", False),
        ("Observation?value-quantity:missing=false", True),
        ("Observation?value-quantity=lt50,gt70", True),
    ],
)
def test_quantity(criteria: str, expected: bool) -> None:
    assert_matches(criteria, OBSERVATION, expected)


@pytest.mark.parametrize(
    ("criteria", "resource", "expected"),
    [
        ("ValueSet?url=http://example.org/fhir/ValueSet/colors", VALUE_SET, True),
        ("ValueSet?url=http://example.org/fhir/ValueSet", VALUE_SET, False),
        ("ValueSet?url=http://example.org/fhir/ValueSet/COLORS", VALUE_SET, False),
        ("ValueSet?url:below=http://example.org/fhir", VALUE_SET, True),
        ("ValueSet?url:below=http://example.org/fhir/", VALUE_SET, True),
        ("ValueSet?url:below=http://example.org/fh", VALUE_SET, False),
        ("ValueSet?url:below=http://other.org/fhir", VALUE_SET, False),
        ("ValueSet?url:above=http://example.org/fhir/ValueSet/colors/v2", VALUE_SET, True),
        ("ValueSet?url:above=http://example.org/fhir/ValueSet", VALUE_SET, False),
        ("ValueSet?url:missing=false", VALUE_SET, True),
        ("Patient?_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient",
         PATIENT, True),
        ("Patient?_profile=http://hl7.org/fhir/StructureDefinition/Patient", PATIENT, False),
        ("Patient?_source:missing=true", PATIENT, True),
    ],
)  # fmt: skip
def test_uri(criteria: str, resource: dict[str, Any], expected: bool) -> None:
    assert_matches(criteria, resource, expected)


@pytest.mark.parametrize(
    ("criteria", "resource", "expected"),
    [
        ("Patient", PATIENT, True),
        ("Patient", PATIENT_WITHOUT_GENDER, True),
        ("Patient?", PATIENT, True),
        ("Patient", OBSERVATION, False),
        ("Patient?gender=female", OBSERVATION, False),
        ("Patient?gender=female&birthdate=ge1980-01-01", PATIENT, True),
        ("Patient?gender=female&birthdate=ge1990-01-01", PATIENT, False),
        ("Patient?gender=female&active=true&family=mu&_tag=vip", PATIENT, True),
        ("Patient?gender=female&gender=male", PATIENT, False),
        ("Observation?patient=pat-1&code=http://loinc.org|29463-7&value-quantity=gt70", OBSERVATION,
         True),
        ("Observation?patient=pat-1&code=http://loinc.org|8302-2", OBSERVATION, False),
        ("Encounter?status=finished&subject=Patient/pat-1&date=2024-03", ENCOUNTER, True),
    ],
)  # fmt: skip
def test_resource_type_and_several_parameters(
    criteria: str, resource: dict[str, Any], expected: bool
) -> None:
    assert_matches(criteria, resource, expected)


@pytest.mark.parametrize(
    ("criteria", "resource"),
    [
        ("Patient?birthdate=ne2000", {**PATIENT, "birthDate": "not a date"}),
        ("Patient?birthdate=1987,ne2000", {**PATIENT, "birthDate": "15/06/1987"}),
        ("Condition?onset-date=ne2000", {**CONDITION, "onsetDateTime": "garbage"}),
        ("Observation?code:not=http://loinc.org|1", {**OBSERVATION, "code": {"coding": 5}}),
        ("Observation?value-quantity=ne5", {**OBSERVATION, "valueQuantity": {"value": "many"}}),
        ("Encounter?date=ne2024", {**ENCOUNTER, "period": {"start": "yesterday"}}),
    ],
)
def test_matching_never_fails_open(criteria: str, resource: dict[str, Any]) -> None:
    assert parse_criteria(criteria).matches(resource) is False


def test_malformed_element_fails_only_its_own_criterion() -> None:
    resource = {**PATIENT, "birthDate": "not a date"}
    assert parse_criteria("Patient?gender=female").matches(resource) is True
    assert parse_criteria("Patient?gender=female&birthdate=ne2000").matches(resource) is False


@pytest.mark.parametrize(
    ("text", "resource_type", "expected_type", "term_count"),
    [
        ("Patient?gender=female&birthdate=ge2000-01-01", None, "Patient", 2),
        ("gender=female&birthdate=ge2000-01-01", "Patient", "Patient", 2),
        ("Patient?gender=female", "Patient", "Patient", 1),
        ("Patient", None, "Patient", 0),
        ("", "Patient", "Patient", 0),
        ("  Encounter?status=finished  ", None, "Encounter", 1),
        ("Observation?code=a&code=b", None, "Observation", 2),
        ("Patient?gender=female&", None, "Patient", 1),
    ],
)
def test_parse_criteria_shapes(
    text: str, resource_type: str | None, expected_type: str, term_count: int
) -> None:
    criteria = parse_criteria(text, resource_type)
    assert isinstance(criteria, Criteria)
    assert criteria.resource_type == expected_type
    assert len(criteria.terms) == term_count


def test_query_only_criteria_match_like_full_ones() -> None:
    criteria = parse_criteria("gender=female", "Patient")
    assert criteria.matches(PATIENT) is True
    assert criteria.matches({**PATIENT, "gender": "male"}) is False


def test_criteria_are_frozen_and_reusable() -> None:
    criteria = parse_criteria("Patient?gender=female")
    with pytest.raises(AttributeError):
        criteria.resource_type = "Observation"  # type: ignore[misc]
    assert [criteria.matches(PATIENT) for _ in range(3)] == [True, True, True]


@pytest.mark.parametrize(
    ("text", "resource_type", "message"),
    [
        ("Patient?foo=bar", None, "Patient?foo=bar: unknown search parameter 'foo' for Patient"),
        ("Patinet?gender=female", None, "unknown resource type 'Patinet'"),
        ("Resource?_id=1", None, "unknown resource type 'Resource'"),
        ("gender=female", None, "criteria must name a resource type"),
        ("", None, "criteria must name a resource type"),
        ("Observation?code=x", "Patient", "criteria are for Observation, not Patient"),
        ("Observation?subject.name=Smith", None,
         "Observation?subject.name=Smith: chained search parameters are not supported"),
        ("Observation?subject:Patient.name=Smith", None, "chained search parameters"),
        ("Patient?_has:Observation:patient:code=1234-5", None,
         "reverse chaining (_has) is not supported"),
        ("Patient?_filter=name%20eq%20x", None, "_filter expressions are not supported"),
        ("Patient?_type=Patient", None, "_type only applies"),
        ("Patient?_list=list-1", None, "_list needs a server"),
        ("Patient?_count=10", None, "_count shapes search results"),
        ("Patient?_sort=birthdate", None, "_sort shapes search results"),
        ("Patient?_include=Patient:organization", None, "_include shapes search results"),
        ("Patient?_text=diabetes", None, "search parameter '_text' is not supported"),
        ("Patient?_content=diabetes", None, "search parameter '_content' is not supported"),
        ("Observation?code-value-quantity=http://loinc.org|29463-7$gt70", None,
         "'code-value-quantity' is not supported: composite search parameters"),
        ("Location?near=42.2|-83.6|10|km", None, "special search parameters are not supported"),
        ("Patient?gender:in=http://hl7.org/fhir/ValueSet/administrative-gender", None,
         "modifier ':in' is not supported for token parameter 'gender'"),
        ("Observation?code:below=http://loinc.org|29463", None, "modifier ':below'"),
        ("Patient?identifier:of-type=MR|123", None, "modifier ':of-type'"),
        ("Patient?name:text=zoe", None, "modifier ':text' is not supported for string"),
        ("Patient?birthdate:exact=2000", None, "modifier ':exact' is not supported for date"),
        ("Observation?subject:Foo=1", None, "modifier ':Foo' is not supported for reference"),
        ("Observation?patient:Group=1", None, "modifier ':Group' is not supported"),
        ("Observation?subject:identifier=http://mrn|1", None, "modifier ':identifier'"),
        ("ValueSet?url:contains=colors", None, "modifier ':contains' is not supported for uri"),
        ("Patient?gender", None, "Patient?gender: expected name=value"),
        ("Patient?gender=", None, "Patient?gender=: no value given"),
        ("Patient?gender=male,,female", None, "empty value in the comma-separated list"),
        ("Patient?gender:missing=maybe", None, ":missing takes true or false, not 'maybe'"),
        ("Patient?identifier=a|b|c", None, "has more than one '|'"),
        ("Patient?identifier=|", None, "'|' alone names neither a system nor a code"),
        ("Patient?birthdate=xx2000", None, "'xx2000' is not a FHIR date"),
        ("Patient?birthdate=15/06/1987", None, "is not a FHIR date"),
        ("Patient?birthdate=2000-13-01", None, "'2000-13-01' is not a valid date"),
        ("Patient?birthdate=ge", None, "'' is not a FHIR date"),
        ("Observation?value-quantity=heavy", None, "'heavy' is not a number"),
        ("Observation?value-quantity=5|http://unitsofmeasure.org", None,
         "is not number, number|system|code or number||code"),
        ("Observation?value-quantity=5|http://unitsofmeasure.org|", None, "names no unit code"),
        ("RiskAssessment?probability=high", None, "'high' is not a number"),
        ("Observation?subject=Foo/1", None, "'Foo' is not a FHIR R4 resource type"),
        ("Observation?patient=Group/cohort-3", None,
         "a Group cannot be referenced here (allowed: Patient)"),
        ("Observation?subject:Patient=Group/1", None, "a Group cannot be referenced here"),
        ("Observation?subject=bad%20id!", None,
         "'bad id!' is neither Type/id, a resource id nor an absolute URL"),
        ("Patient?family=ends-with\\", None, "ends with a lone backslash"),
    ],
)  # fmt: skip
def test_parse_refuses_what_cannot_be_evaluated(
    text: str, resource_type: str | None, message: str
) -> None:
    with pytest.raises(CriteriaError) as raised:
        parse_criteria(text, resource_type)
    assert message in str(raised.value)


def test_criteria_error_is_a_value_error() -> None:
    assert issubclass(CriteriaError, ValueError)


def test_escaped_comma_is_part_of_the_value() -> None:
    resource = {**PATIENT, "name": [{"family": "Smith, Jr"}]}
    assert parse_criteria("Patient?family=Smith\\, Jr").matches(resource) is True
    assert parse_criteria("Patient?family=Jones\\, Jr").matches(resource) is False
    assert parse_criteria("Patient?family=Jones,Smith").matches(resource) is True


def test_escaped_bar_is_part_of_the_code() -> None:
    resource = {**PATIENT, "identifier": [{"system": "http://x.example", "value": "A|B"}]}
    assert parse_criteria("Patient?identifier=http://x.example|A\\|B").matches(resource) is True
    assert parse_criteria("Patient?identifier=http://x.example|A").matches(resource) is False


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Patient", True),
        ("Encounter", True),
        ("Observation", True),
        ("Person", True),
        ("MessageHeader", True),
        ("Bundle", True),
        ("Subscription", True),
        ("AuditEvent", True),
        ("Parameters", True),
        ("patient", False),
        ("Resource", False),
        ("DomainResource", False),
        ("SubscriptionTopic", False),  # R4B and later
        ("SubscriptionStatus", False),  # R4B and later
        ("", False),
    ],
)
def test_is_resource_type(name: str, expected: bool) -> None:
    assert is_resource_type(name) is expected


def test_resource_types_are_the_sorted_r4_list() -> None:
    assert len(RESOURCE_TYPES) == 146
    assert list(RESOURCE_TYPES) == sorted(RESOURCE_TYPES)

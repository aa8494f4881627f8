"""Member paths (`Encounter.subject.reference`) read straight off the JSON: which expressions
qualify, and that the reading returns exactly what fhirpathpy returns (a differential test over
the R4 search parameters' own expressions and generated resources)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.fhir.fhirpath import FhirPathError, MemberPath, compile_expression
from app.fhir.search_definitions import _table


@pytest.mark.parametrize(
    ("text", "members"),
    [
        ("Encounter.subject", MemberPath("Encounter", ("subject",))),
        ("Patient.name.given", MemberPath("Patient", ("name", "given"))),
        ("Encounter.subject.reference", MemberPath("Encounter", ("subject", "reference"))),
        ("Bundle.entry.resource", MemberPath("Bundle", ("entry", "resource"))),
    ],
)
def test_member_paths_are_recognised(text: str, members: MemberPath) -> None:
    assert compile_expression(text).members == members


@pytest.mark.parametrize(
    "text",
    [
        "Observation.value",  # a choice type: valueQuantity, valueString, ...
        "Observation.component.value",  # a choice type one level down
        "Observation.value.unit",  # ... and navigation beyond it
        "Patient.name.where(use = 'official')",
        "Encounter.subject | Encounter.basedOn",
        "Patient.extension",  # fhirpathpy types `extension` specially
        "Patient.name.given.length",  # a string's length
        "Bundle.entry.resource.Patient",  # a type name filters by resourceType
        "`Patient`.name",
        "Patient",  # no member at all
        "status",  # no resource type
        "%resource.status",
        "Patient.name[0]",
        "Patient.active = true",
    ],
)
def test_other_expressions_are_left_to_fhirpathpy(text: str) -> None:
    assert compile_expression(text).members is None


def _search_expressions() -> list[str]:
    """Every R4 search parameter expression, as Tidings compiles it."""
    texts = set()
    for entries in _table().values():
        for entry in entries.values():
            if entry.get("expression") and not entry.get("unsupported"):
                texts.add(entry["expression"])
    return sorted(texts)


MEMBER_EXPRESSIONS = [
    text for text in _search_expressions() if compile_expression(text).members is not None
]


def test_most_search_parameters_are_member_paths() -> None:
    assert len(MEMBER_EXPRESSIONS) > 0.5 * len(_search_expressions())


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.sampled_from([0.1, -0.0, 5.0, 1e16, 1.5e-7]),
    st.text(max_size=5),
)
extension_only = st.builds(
    lambda url: {"extension": [{"url": url, "valueString": "x"}]}, st.text(max_size=3)
)
json_values = st.recursive(
    st.one_of(scalars, extension_only),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "_a", "extension", "id"]), inner, max_size=3),
    ),
    max_leaves=8,
)


@st.composite
def element_along(draw: st.DrawFn, keys: tuple[str, ...]) -> Any:
    """A value for a resource's element at the start of `keys`: mostly objects that carry the
    rest of the path, sometimes lists of them mixed with other values, or anything at all."""
    if not keys:
        return draw(json_values)
    shape = draw(st.sampled_from(["object", "object", "list", "other"]))
    if shape == "other":
        return draw(json_values)
    if shape == "list":
        return draw(
            st.lists(st.one_of(element_along(keys), json_values, extension_only), max_size=3)
        )
    key, rest = keys[0], keys[1:]
    element: dict[str, Any] = {key: draw(element_along(rest))}
    if draw(st.booleans()):
        element["_" + key] = draw(st.one_of(extension_only, st.lists(extension_only, max_size=2)))
    if draw(st.integers(0, 9)) == 0:
        element["resourceType"] = "Patient"  # a contained resource on the way
    return element


@st.composite
def resource_for(draw: st.DrawFn, members: MemberPath) -> dict[str, Any]:
    """A resource of the path's type (or another, or none) that the path reaches into."""
    resource_type = draw(st.sampled_from([members.resource_type, members.resource_type, "Basic"]))
    resource: dict[str, Any] = draw(element_along(members.keys))
    if not isinstance(resource, dict):
        resource = {members.keys[0]: resource}
    resource.pop("resourceType", None)
    if draw(st.integers(0, 19)):
        resource["resourceType"] = resource_type
    return resource


def _outcome(evaluate: Any, resource: dict[str, Any]) -> Any:
    try:
        return evaluate(resource)
    except FhirPathError:
        return FhirPathError


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_member_paths_return_what_fhirpathpy_returns(data: st.DataObject) -> None:
    expression = compile_expression(data.draw(st.sampled_from(MEMBER_EXPRESSIONS)))
    assert expression.members is not None
    resource = data.draw(resource_for(expression.members))
    expected = _outcome(expression.evaluate_with_fhirpathpy, resource)
    assert _outcome(expression.evaluate, resource) == expected


def test_member_paths_return_copies() -> None:
    resource = {"resourceType": "Encounter", "subject": {"reference": "Patient/p1"}}
    found = compile_expression("Encounter.subject").evaluate(resource)
    assert found == [{"reference": "Patient/p1"}]
    found[0]["reference"] = "changed"
    assert resource["subject"] == {"reference": "Patient/p1"}


def test_a_member_path_drops_primitive_extensions_as_fhirpathpy_does() -> None:
    resource = {
        "resourceType": "Patient",
        "name": [{"given": ["Ann", None], "_given": [None, {"extension": [{"url": "u"}]}]}],
    }
    expression = compile_expression("Patient.name.given")
    assert expression.evaluate(resource) == ["Ann", None, None]
    assert expression.evaluate(resource) == expression.evaluate_with_fhirpathpy(resource)

"""FHIRPath expressions compiled once and evaluated on plain FHIR R4 resource dicts.

Catalog triggers and Subscription filters carry FHIRPath (SPEC section 5): an expression may read
`%previous` (the version before the change) and `%current` (the version after it). Expressions are
checked when they are compiled, so a typo or a function the evaluator does not have is refused when
the catalog or Subscription is loaded, not silently false on every event.

`resolve()` is refused: Tidings sees one resource at a time and has no server to follow references.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream  # type: ignore[import-untyped]
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import FP_Type
from fhirpathpy.models import models
from fhirpathpy.parser import parse
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

# fhirpathpy's functions carry no annotations; these are their shapes as Tidings uses them.
_parse_tree: Callable[[str], dict[str, Any]] = parse
_apply_parsed_path: Callable[..., list[Any]] = fhirpathpy.apply_parsed_path
FUNCTIONS = cast(dict[str, dict[str, Any]], invocation_registry)

R4_MODEL: dict[str, Any] = models["r4"]

ENVIRONMENT_VARIABLES = frozenset(
    {"previous", "current", "context", "resource", "rootResource", "ucum", "sct", "loinc"}
)

CODE_SYSTEMS = {
    "ucum": "http://unitsofmeasure.org",
    "sct": "http://snomed.info/sct",
    "loinc": "http://loinc.org",
}


class FhirPathError(ValueError):
    """A FHIRPath expression that cannot be compiled, or failed while it was evaluated."""


def _single(inputs: list[Any]) -> list[Any]:
    """FHIRPath `single()`: an error on several items (fhirpathpy returns an error object)."""
    if len(inputs) > 1:
        raise FhirPathError(f"single() found {len(inputs)} items")
    return inputs


EVALUATION_OPTIONS = {"userInvocationTable": {"single": {"fn": _single}}}


class _RaisingErrorListener:
    """An ANTLR error listener that turns the first syntax error into a FhirPathError."""

    def __init__(self, text: str) -> None:
        self.text = text

    def syntaxError(  # noqa: N802 (ANTLR's listener protocol)
        self, recognizer: Any, symbol: Any, line: int, column: int, message: str, error: Any
    ) -> None:
        reason = message.split(" expecting ")[0]  # ANTLR's token sets are noise to a user
        raise FhirPathError(f"invalid FHIRPath {self.text!r} at column {column + 1}: {reason}")

    def reportAmbiguity(self, *args: Any) -> None:  # noqa: N802
        """Ambiguities are resolved by the grammar; nothing to report."""

    def reportAttemptingFullContext(self, *args: Any) -> None:  # noqa: N802
        """Full-context parsing is normal; nothing to report."""

    def reportContextSensitivity(self, *args: Any) -> None:  # noqa: N802
        """Context sensitivity is normal; nothing to report."""


def _check_syntax(text: str) -> None:
    """Parse the whole text strictly: fhirpathpy's own parser ignores syntax errors."""
    listener = _RaisingErrorListener(text)
    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    parser.entireExpression()  # type: ignore[no-untyped-call]


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a fhirpathpy syntax tree, depth first."""
    yield node
    for child in node.get("children", []):
        yield from _nodes(child)


def _identifier(node: dict[str, Any]) -> str:
    """The name of the Identifier under a function or external-constant node."""
    for child in _nodes(node):
        if child.get("type") == "Identifier":
            return str(child["text"]).strip("`")
    return ""


def _check_function(text: str, node: dict[str, Any]) -> None:
    """Refuse functions the evaluator lacks and calls with the wrong number of arguments."""
    name = _identifier(node)
    if name == "resolve":
        raise FhirPathError(f"{text!r}: resolve() is not supported (no server to resolve against)")
    invocation = FUNCTIONS.get(name)
    if invocation is None or "fn" not in invocation:
        raise FhirPathError(f"{text!r}: unknown FHIRPath function {name}()")
    params = [child for child in node["children"] if child["type"] == "ParamList"]
    count = len(params[0]["children"]) if params else 0
    arities = invocation.get("arity", {0: []})
    if count not in arities and "variadic" not in invocation:
        raise FhirPathError(f"{text!r}: {name}() takes {_arity_text(arities)}, not {count}")


def _arity_text(arities: dict[int, Any]) -> str:
    """`1 argument` or `2 or 3 arguments`."""
    counts = sorted(arities)
    noun = "argument" if counts == [1] else "arguments"
    return f"{' or '.join(map(str, counts))} {noun}"


def _check_semantics(text: str, tree: dict[str, Any]) -> None:
    """Check functions and environment variables, which fhirpathpy only finds when evaluating."""
    for node in _nodes(tree):
        if node.get("type") == "Functn":
            _check_function(text, node)
        elif node.get("type") == "ExternalConstant":
            name = _identifier(node).strip("'")
            if name not in ENVIRONMENT_VARIABLES:
                raise FhirPathError(f"{text!r}: unknown environment variable %{name}")


def _plain(value: Any) -> Any:
    """fhirpathpy's values as JSON-like Python: decimals as numbers, FHIRPath types as text."""
    if isinstance(value, Decimal):
        return int(value) if value.as_tuple().exponent == 0 else float(value)
    if isinstance(value, FP_Type):
        return str(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _visible(value: Any) -> Any:
    """A JSON value as fhirpathpy returns it: a copy without the items of its lists that carry
    only a primitive's extension (`{"extension": [...]}`, from `_given` and the like)."""
    if isinstance(value, list):
        return [item for item in map(_visible, value) if not _extension_only(item)]
    if isinstance(value, dict):
        return {key: _visible(item) for key, item in value.items()}
    return value


def _extension_only(value: Any) -> bool:
    return isinstance(value, dict) and list(value) == ["extension"]


@dataclass(frozen=True)
class MemberPath:
    """`Type.a.b.c`: member navigation only, from a resource type, through elements that are
    not choice types (`value[x]`). Most search parameters' expressions are of this form.

    Its result is what fhirpathpy returns for it, read straight off the JSON six to twelve
    times faster (docs/performance.md). `read` answers None where that would not be certain
    (a resource without `resourceType`, or a contained resource on the way), and the caller
    asks fhirpathpy.
    """

    resource_type: str
    keys: tuple[str, ...]

    def read(self, resource: dict[str, Any]) -> list[Any] | None:
        """The result collection on `resource`, or None to leave it to fhirpathpy."""
        resource_type = resource.get("resourceType")
        if resource_type is None:
            return None  # fhirpathpy fails on it
        if resource_type != self.resource_type:
            return []
        found: list[Any] = [resource]
        for step, key in enumerate(self.keys):
            children: list[Any] = []
            for element in found:
                if not isinstance(element, dict):
                    continue
                if step and "resourceType" in element:
                    return None  # a contained resource: fhirpathpy types it afresh
                for value in (element.get(key), element.get("_" + key)):
                    if isinstance(value, list):
                        children += value
                    elif value is not None:
                        children.append(value)
            found = children
            if not found:
                break
        # fhirpathpy copies an item that is itself a list (not FHIR, but JSON allows it) as is.
        return [
            _plain(item) if isinstance(item, list) else _visible(item)
            for item in found
            if not _extension_only(item)
        ]


def _member_names(node: dict[str, Any]) -> list[str] | None:
    """The identifiers of `A.b.c` from the syntax tree of an expression, or None when it is
    anything more than member access."""
    kind, children = node.get("type"), node.get("children", [])
    if kind == "TermExpression" and len(children) == 1:
        return _member_names(children[0])
    if kind == "InvocationTerm" and len(children) == 1:
        return _member_names(children[0])
    if kind == "MemberInvocation" and len(children) == 1 and children[0]["type"] == "Identifier":
        return [str(children[0]["text"])]
    if kind == "InvocationExpression" and node.get("terminalNodeText") == ["."]:
        if len(children) == 2 and children[1].get("type") == "MemberInvocation":
            base, member = _member_names(children[0]), _member_names(children[1])
            return None if base is None or member is None else base + member
    return None


def _member_path(tree: dict[str, Any]) -> MemberPath | None:
    """The expression as a `MemberPath`, or None when it is not one. Each step's type is
    followed through the R4 model as fhirpathpy follows it, so that a choice-type element
    anywhere on the path is recognised."""
    roots = tree.get("children", [])
    names = _member_names(roots[0]) if len(roots) == 1 else None
    if not names or len(names) < 2 or any("`" in name for name in names):
        return None
    resource_type, keys = names[0], names[1:]
    if not resource_type[0].isupper() or any(key[0].isupper() for key in keys):
        return None  # a type name after the first step filters by resource type
    path = resource_type
    for key in keys:
        if key in ("extension", "length"):
            return None  # fhirpathpy treats these two names specially
        child = f"{path}.{key}"
        child = R4_MODEL["pathsDefinedElsewhere"].get(child, child)
        if child in R4_MODEL["choiceTypePaths"]:
            return None
        path = R4_MODEL["path2Type"].get(child, child)
    return MemberPath(resource_type, tuple(keys))


@dataclass(frozen=True)
class FhirPathExpression:
    """A compiled FHIRPath expression; evaluate it as often as needed."""

    text: str
    tree: dict[str, Any] = field(repr=False, compare=False)
    members: MemberPath | None = field(default=None, repr=False, compare=False)

    def evaluate(
        self,
        resource: dict[str, Any],
        *,
        previous: dict[str, Any] | None = None,
        current: dict[str, Any] | None = None,
    ) -> list[Any]:
        """The expression's result collection on `resource`.

        `%previous` is the version before the change (empty when there is none) and `%current`
        the version after it (by default `resource`). Raises FhirPathError if evaluation fails.
        """
        if self.members is not None:
            found = self.members.read(resource)
            if found is not None:
                return found
        return self.evaluate_with_fhirpathpy(resource, previous=previous, current=current)

    def evaluate_with_fhirpathpy(
        self,
        resource: dict[str, Any],
        *,
        previous: dict[str, Any] | None = None,
        current: dict[str, Any] | None = None,
    ) -> list[Any]:
        """`evaluate`, always by fhirpathpy (the reference the member-path reading is tested
        against)."""
        environment = {
            **CODE_SYSTEMS,
            "previous": [] if previous is None else previous,
            "current": resource if current is None else current,
            "resource": resource,
            "rootResource": resource,
        }
        try:
            result = _apply_parsed_path(
                resource, self.tree, environment, R4_MODEL, EVALUATION_OPTIONS
            )
        except Exception as error:  # fhirpathpy raises bare Exception for type errors
            raise FhirPathError(f"{self.text!r} failed: {error}") from error
        return [_plain(item) for item in result]

    def is_true(
        self,
        resource: dict[str, Any],
        *,
        previous: dict[str, Any] | None = None,
        current: dict[str, Any] | None = None,
    ) -> bool:
        """FHIRPath truthiness of the result: non-empty and not `[false]`.

        Any failure counts as false, so a broken filter never lets a change through.
        """
        try:
            result = self.evaluate(resource, previous=previous, current=current)
        except Exception:
            return False
        return bool(result) and result != [False]


def compile_expression(text: str) -> FhirPathExpression:
    """Compile a FHIRPath expression, raising FhirPathError with the reason if it is not valid."""
    if not text or not text.strip():
        raise FhirPathError("a FHIRPath expression must not be empty")
    try:
        _check_syntax(text)
        tree = _parse_tree(text)
    except FhirPathError:
        raise
    except Exception as error:  # the ANTLR lexer raises its own errors on stray characters
        raise FhirPathError(f"invalid FHIRPath {text!r}: {error}") from error
    _check_semantics(text, tree)
    return FhirPathExpression(text=text, tree=tree, members=_member_path(tree))

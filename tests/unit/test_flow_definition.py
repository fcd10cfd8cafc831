"""Defining flows: what the decorators accept, and every definition-time error."""

from __future__ import annotations

from typing import Any

import pytest

from pgflow.errors import PgflowError
from pgflow.flow import Flow, FlowDefinitionError, UnknownStepError


def handler(value: Any, ctx: Any) -> Any:
    return value


def defined_error(call: Any, *fragments: str) -> FlowDefinitionError:
    """Run `call`, expect a FlowDefinitionError, and check its message contains `fragments`."""
    with pytest.raises(FlowDefinitionError) as caught:
        call()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return caught.value


# -- what works ------------------------------------------------------------------------------------


def test_decorators_return_the_function_unchanged_and_register_steps_in_order() -> None:
    flow = Flow("report")

    def fetch(url: Any, ctx: Any) -> Any:
        return [url]

    assert flow.step()(fetch) is fetch

    @flow.map(array=fetch)
    def score(item: Any) -> Any:
        return item

    @flow.step(depends_on=[fetch, score])
    def publish(deps: Any) -> Any:
        return deps

    assert fetch("u", None) == ["u"]
    assert [step.slug for step in flow.steps] == ["fetch", "score", "publish"]
    assert flow.get_step("score").step_type == "map"
    assert flow.get_step("score").dependencies == ("fetch",)
    assert flow.get_step("publish").dependencies == ("fetch", "score")
    assert flow.get_step("publish").handler is publish
    assert flow.get_step("fetch").is_root
    assert not flow.get_step("publish").is_root
    assert "score" in flow
    assert "nope" not in flow
    assert len(flow) == 3


def test_bare_decorators_work_without_parentheses() -> None:
    flow = Flow("bare")

    @flow.step
    def first(value: Any) -> Any:
        return value

    @flow.map
    def each(item: Any) -> Any:
        return item

    assert first(1) == 1
    assert flow.get_step("first").step_type == "single"
    each_step = flow.get_step("each")
    assert each_step.step_type == "map"
    assert each_step.is_root


def test_dependencies_can_be_slugs_steps_or_functions() -> None:
    flow = Flow("refs")
    flow.step("a")(handler)
    flow.step("b")(lambda value: value)

    @flow.step()
    def c(value: Any) -> Any:
        return value

    flow.step("d", depends_on=["a", flow.get_step("b"), c])(handler)
    flow.map("e", array=["a"])(handler)
    flow.map("f", array=flow.get_step("c"))(handler)
    flow.step("g", depends_on=(slug for slug in ("a", "b")))(handler)
    assert flow.get_step("d").dependencies == ("a", "b", "c")
    assert flow.get_step("e").dependencies == ("a",)
    assert flow.get_step("f").dependencies == ("c",)
    assert flow.get_step("g").dependencies == ("a", "b")


def test_bound_methods_can_be_dependencies() -> None:
    class Handlers:
        def first(self, value: Any) -> Any:
            return value

        def second(self, deps: Any) -> Any:
            return deps

    handlers = Handlers()
    flow = Flow("methods")
    flow.step()(handlers.first)
    # `handlers.first` is a new bound-method object on every access.
    flow.step(depends_on=[handlers.first])(handlers.second)
    assert flow.get_step("second").dependencies == ("first",)


def test_step_slugs_only_need_to_be_unique_exactly() -> None:
    flow = Flow("cases")
    flow.step("fetch")(handler)
    flow.step("Fetch")(handler)
    assert [step.slug for step in flow.steps] == ["fetch", "Fetch"]


def test_edge_values_are_accepted() -> None:
    flow = Flow("f" * 47, max_attempts=0, base_delay=0, timeout=1)
    flow.step("s" * 128, max_attempts=0, base_delay=0, timeout=1, start_delay=0)(handler)
    flow.step("_x1", max_attempts=2**31 - 1, if_={}, when_unmet="skip-cascade")(handler)
    assert flow.get_step("s" * 128).max_attempts == 0
    assert flow.get_step("_x1").when_unmet == "skip-cascade"


def test_patterns_are_copied_when_the_step_is_defined() -> None:
    flow = Flow("copies")
    pattern: dict[str, Any] = {"kind": {"deep": [1]}}
    flow.step("a", if_=pattern)(handler)
    pattern["kind"]["deep"].append(2)
    pattern["extra"] = True
    assert flow.get_step("a").required_input_pattern == {"kind": {"deep": [1]}}


def test_get_step_of_an_unknown_slug_names_the_flow_and_its_steps() -> None:
    flow = Flow("lookup")
    flow.step("a")(handler)
    with pytest.raises(UnknownStepError) as caught:
        flow.get_step("b")
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, PgflowError)
    assert "flow 'lookup' has no step 'b' (its steps: a)" in str(caught.value)
    assert caught.value.step_slug == "b"


# -- flow slugs and flow options ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "fragment"),
    [
        ("", "flow slug '' is empty"),
        ("my-flow", "flow slug 'my-flow' must start with a letter or underscore"),
        ("1flow", "^[a-zA-Z_][a-zA-Z0-9_]*$"),
        ("run", "flow slug 'run' is a reserved word"),
        ("x" * 129, "is 129 characters long (the limit is 128)"),
        ("x" * 48, "is 48 characters long; a flow slug is also the name of its pgmq queue"),
    ],
)
def test_invalid_flow_slugs_are_rejected(slug: str, fragment: str) -> None:
    error = defined_error(lambda: Flow(slug), fragment)
    assert isinstance(error, PgflowError)
    assert error.flow_slug == slug


def test_flow_slug_must_be_a_string() -> None:
    defined_error(lambda: Flow(42), "a flow slug must be a string, got int (42)")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"max_attempts": -1}, "flow 'opts': max_attempts must be 0 or more, got -1"),
        ({"max_attempts": True}, "max_attempts must be a whole number of attempts, got bool"),
        ({"base_delay": 1.5}, "base_delay must be a whole number of seconds, got float (1.5)"),
        ({"base_delay": -2}, "base_delay must be 0 or more, got -2"),
        ({"timeout": 0}, "flow 'opts': timeout must be at least 1, got 0"),
        ({"timeout": "60"}, "timeout must be a whole number of seconds, got str ('60')"),
        ({"timeout": 2**31}, "timeout must be at most 2147483647 (a Postgres int)"),
    ],
)
def test_invalid_flow_options_are_rejected(options: dict[str, Any], fragment: str) -> None:
    defined_error(lambda: Flow("opts", **options), fragment)


# -- step slugs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "fragment"),
    [
        ("bad slug", "step 'bad slug' of flow 'steps': the step slug must start with a letter"),
        ("run", "step 'run' of flow 'steps': the step slug is a reserved word"),
        ("", "the step slug is empty"),
        ("s" * 129, "is 129 characters long (the limit is 128)"),
    ],
)
def test_invalid_step_slugs_are_rejected(slug: str, fragment: str) -> None:
    flow = Flow("steps")
    error = defined_error(lambda: flow.step(slug)(handler), fragment, "choose another step slug")
    assert error.flow_slug == "steps"
    assert error.step_slug == slug
    assert len(flow) == 0


def test_an_invalid_function_name_suggests_passing_a_slug() -> None:
    flow = Flow("names")
    defined_error(
        lambda: flow.step()(lambda value: value),
        "step '<lambda>' of flow 'names'",
        "pass a valid slug with @flow.step(slug=...) or rename the function",
    )


def test_a_handler_without_a_name_needs_an_explicit_slug() -> None:
    class Handler:
        def __call__(self, value: Any) -> Any:
            return value

    flow = Flow("nameless")
    defined_error(lambda: flow.step()(Handler()), "has no __name__", "slug=...")
    flow.step("named")(Handler())
    assert flow.get_step("named").invoke(5) == 5


def test_a_non_string_step_slug_is_rejected() -> None:
    flow = Flow("types")
    defined_error(
        lambda: flow.step(7)(handler),  # type: ignore[call-overload]
        "a step slug must be a string, got int (7)",
    )


def test_duplicate_step_slugs_are_rejected() -> None:
    flow = Flow("dupes")

    @flow.step()
    def fetch(value: Any) -> Any:
        return value

    error = defined_error(
        lambda: flow.step("fetch")(handler),
        "flow 'dupes' already has a step 'fetch'",
        "fetch()",
        "slug=...",
    )
    assert error.step_slug == "fetch"


# -- dependencies -----------------------------------------------------------------------------------


def test_an_unknown_dependency_slug_says_to_define_it_first() -> None:
    flow = Flow("order")
    flow.step("a")(handler)
    defined_error(
        lambda: flow.step("b", depends_on=["c"])(handler),
        "step 'b' of flow 'order' depends on 'c', which is not defined (yet)",
        "define 'c' above 'b'",
        "free of cycles",
        "steps so far: a",
    )


def test_a_cycle_written_with_slugs_is_refused_at_its_first_edge() -> None:
    flow = Flow("cycle")
    defined_error(
        lambda: flow.step("a", depends_on=["b"])(handler),
        "step 'a' of flow 'cycle' depends on 'b', which is not defined (yet)",
        "steps so far: none yet",
        "cycles",
    )
    flow.step("b")(handler)
    flow.step("a", depends_on=["b"])(handler)
    assert flow.get_step("a").dependencies == ("b",)


def test_a_self_dependency_is_rejected() -> None:
    flow = Flow("selfish")
    defined_error(
        lambda: flow.step("a", depends_on=["a"])(handler),
        "step 'a' of flow 'selfish' depends on itself",
        "cycle",
    )


def test_a_map_over_itself_is_rejected() -> None:
    flow = Flow("selfmap")
    defined_error(lambda: flow.map("m", array="m")(handler), "step 'm'", "depends on itself")


def test_an_undecorated_function_is_not_a_dependency() -> None:
    flow = Flow("loose")

    def helper(value: Any) -> Any:
        return value

    defined_error(
        lambda: flow.step("b", depends_on=[helper])(handler),
        "depends on",
        "helper()",
        "which is not a step of this flow",
        "@flow.step() above 'b'",
    )


def test_steps_of_another_flow_are_not_dependencies() -> None:
    other = Flow("other")

    @other.step()
    def source(value: Any) -> Any:
        return value

    flow = Flow("mine")
    defined_error(
        lambda: flow.step("b", depends_on=[source])(handler), "which is not a step of this flow"
    )
    defined_error(
        lambda: flow.step("b", depends_on=[other.get_step("source")])(handler),
        "step 'b' of flow 'mine' depends on step 'source' of another flow ('other')",
    )


def test_a_function_registered_twice_must_be_named_by_slug() -> None:
    flow = Flow("twice")
    flow.step("a")(handler)
    flow.step("b")(handler)
    defined_error(
        lambda: flow.step("c", depends_on=[handler])(handler),
        "registered as several steps (a, b)",
        "name the dependency by its slug",
    )
    flow.step("c", depends_on=["a", "b"])(handler)


def test_a_dependency_listed_twice_is_rejected() -> None:
    flow = Flow("twice_dep")

    @flow.step()
    def a(value: Any) -> Any:
        return value

    defined_error(
        lambda: flow.step("b", depends_on=[a, "a"])(handler),
        "step 'b' of flow 'twice_dep' lists dependency 'a' more than once",
    )


def test_depends_on_must_be_a_list() -> None:
    flow = Flow("lists")

    @flow.step()
    def a(value: Any) -> Any:
        return value

    defined_error(
        lambda: flow.step("b", depends_on=a)(handler),  # type: ignore[call-overload]
        "step 'b' of flow 'lists': depends_on must be a list, got a single step",
        "depends_on=[a]",
    )
    defined_error(
        lambda: flow.step("b", depends_on="a")(handler),
        "depends_on=['a']",
    )
    defined_error(
        lambda: flow.step("b", depends_on=5)(handler),  # type: ignore[call-overload]
        "depends_on must be a list of steps, got int",
    )
    defined_error(
        lambda: flow.step("b", depends_on=[3])(handler),  # type: ignore[list-item]
        "a dependency must be a step's function, slug or Step, got int (3)",
    )


def test_a_map_takes_its_array_from_one_step_only() -> None:
    flow = Flow("maps")
    flow.step("a")(handler)
    flow.step("b")(handler)
    error = defined_error(
        lambda: flow.map("m", array=["a", "b"])(handler),
        "step 'm' of flow 'maps': a map step takes its array from exactly one step, "
        "but 2 were given ('a', 'b')",
        "leave array out to map over the run input",
    )
    assert error.step_slug == "m"
    defined_error(lambda: flow.map("m", array=[])(handler), "but 0 were given")
    defined_error(
        lambda: flow.map("m", array=5)(handler),  # type: ignore[call-overload]
        "array must be a step (its function, slug or Step) or None for the run input, got int",
    )


# -- step options, conditions and modes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"max_attempts": -1}, "step 's' of flow 'opts': max_attempts must be 0 or more, got -1"),
        ({"max_attempts": False}, "max_attempts must be a whole number of attempts, got bool"),
        ({"base_delay": -1}, "base_delay must be 0 or more, got -1"),
        ({"base_delay": 0.5}, "base_delay must be a whole number of seconds, got float"),
        ({"timeout": 0}, "step 's' of flow 'opts': timeout must be at least 1, got 0"),
        ({"timeout": -5}, "timeout must be at least 1, got -5"),
        ({"start_delay": -1}, "start_delay must be 0 or more, got -1"),
        ({"start_delay": True}, "start_delay must be a whole number of seconds, got bool"),
        ({"start_delay": 2**31}, "start_delay must be at most 2147483647"),
    ],
)
def test_invalid_step_options_are_rejected(options: dict[str, Any], fragment: str) -> None:
    flow = Flow("opts")
    defined_error(lambda: flow.step("s", **options)(handler), fragment)
    defined_error(lambda: flow.map("s", **options)(handler), fragment)
    assert len(flow) == 0


@pytest.mark.parametrize("name", ["if_", "if_not"])
def test_condition_patterns_must_be_json_objects(name: str) -> None:
    flow = Flow("conds")
    not_a_dict: dict[str, Any] = {name: ["ok"]}
    not_json: dict[str, Any] = {name: {"when": object()}}
    defined_error(
        lambda: flow.step("s", **not_a_dict)(handler),
        f"step 's' of flow 'conds': {name} must be a JSON object (a dict), got list (['ok'])",
    )
    defined_error(
        lambda: flow.step("s", **not_json)(handler),
        f"{name} must contain only JSON values",
    )


def test_conditions_of_dependent_steps_must_refer_to_dependencies() -> None:
    flow = Flow("cond_keys")
    flow.step("fetch")(handler)
    defined_error(
        lambda: flow.step("b", depends_on=["fetch"], if_not={"status": "down"})(handler),
        "step 'b' of flow 'cond_keys': if_not refers to 'status', which is not among its "
        "dependencies (fetch)",
        '{"fetch": {"ok": true}}',
    )
    # Root steps match the run input, whose keys are the user's business.
    flow.step("root", if_={"status": "up"})(handler)
    flow.step("b", depends_on=["fetch"], if_={"fetch": {"ok": True}})(handler)


@pytest.mark.parametrize("name", ["when_unmet", "when_exhausted"])
def test_mode_words_are_checked(name: str) -> None:
    flow = Flow("modes")
    options: dict[str, Any] = {name: "ignore"}
    defined_error(
        lambda: flow.step("s", **options)(handler),
        f"step 's' of flow 'modes': {name} must be one of 'fail', 'skip', 'skip-cascade', "
        "got 'ignore'",
    )


# -- handlers ---------------------------------------------------------------------------------------


def test_the_handler_must_be_callable() -> None:
    flow = Flow("calls")
    defined_error(
        lambda: flow.step("s")(5),  # type: ignore[type-var]
        "step 's' of flow 'calls': the handler must be callable, got int",
    )


def test_generator_handlers_are_rejected() -> None:
    flow = Flow("gens")

    def numbers(value: Any) -> Any:
        yield value

    async def async_numbers(value: Any) -> Any:
        yield value

    for function in (numbers, async_numbers):
        defined_error(lambda f=function: flow.step()(f), "is a generator", "return it")


def test_handler_signatures_must_fit_input_and_ctx() -> None:
    flow = Flow("sigs")

    def nothing() -> None:
        return None

    def too_many(a: Any, b: Any, c: Any) -> None:
        return None

    def keyword(value: Any, *, extra: Any) -> None:
        return None

    def only_keywords(*, value: Any) -> None:
        return None

    defined_error(lambda: flow.step()(nothing), "step 'nothing'", "takes no positional parameter")
    defined_error(
        lambda: flow.step()(too_many),
        "requires 3 positional parameters (a, b, c)",
        "a handler takes (input) or (input, ctx)",
    )
    defined_error(lambda: flow.step()(keyword), "required keyword-only parameters (extra)")
    defined_error(lambda: flow.step()(only_keywords), "required keyword-only parameters (value)")
    assert len(flow) == 0


def test_an_unreadable_signature_is_reported() -> None:
    flow = Flow("builtins")
    # `type` has several signatures, so inspect cannot give one.
    defined_error(lambda: flow.step("s")(type), "cannot read the handler's signature")


@pytest.mark.parametrize("decorator", ["step", "map"])
def test_step_and_map_share_one_set_of_options_and_reject_unknown_ones(decorator: str) -> None:
    flow = Flow("options_flow")
    declare = getattr(flow, decorator)
    declare("first", max_attempts=5, base_delay=2, timeout=9, start_delay=1, when_exhausted="skip")(
        lambda value: value
    )
    (step,) = flow.steps
    assert (step.max_attempts, step.base_delay, step.timeout, step.start_delay) == (5, 2, 9, 1)
    assert step.when_exhausted == "skip"
    with pytest.raises(FlowDefinitionError, match=r"unknown option .max_attempt. \(did you mean"):
        declare("second", max_attempt=3)(lambda value: value)


def test_descendants_follow_dependencies_through_other_steps() -> None:
    flow = Flow("desc_flow")

    @flow.step()
    def top(value: Any) -> int:
        return 1

    @flow.step(depends_on=[top])
    def left(deps: Any) -> list[int]:
        return [1]

    @flow.step()
    def apart(value: Any) -> int:
        return 2

    @flow.map(array=left)
    def each(item: Any) -> int:
        return item

    @flow.step(depends_on=[each, apart])
    def last(deps: Any) -> int:
        return 0

    assert [s.slug for s in flow.descendants("top")] == ["left", "each", "last"]
    assert [s.slug for s in flow.descendants("apart")] == ["last"]
    assert flow.descendants("last") == ()
    with pytest.raises(UnknownStepError):
        flow.descendants("nope")

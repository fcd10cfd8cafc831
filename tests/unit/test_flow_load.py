"""load_flow: resolving "module:attribute" references, and its errors."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgflow.flow import Flow, FlowDefinitionError, FlowLoadError, load_flow

FLOW_MODULE = """
from pgflow.flow import Flow

flow = Flow("loaded")

@flow.step()
def first(value):
    return value

class Holder:
    flow = flow

not_a_flow = {"steps": []}
"""

WriteModule = Callable[[str, str], None]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Write importable modules under tmp_path; forget them from sys.modules afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(dotted: str, source: str) -> None:
        parts = dotted.split(".")
        directory = tmp_path
        for package in parts[:-1]:
            directory = directory / package
            directory.mkdir(exist_ok=True)
            (directory / "__init__.py").touch()
        (directory / f"{parts[-1]}.py").write_text(textwrap.dedent(source))
        written.append(dotted)

    yield write
    for name in list(sys.modules):
        if any(name == dotted or dotted.startswith(name + ".") for dotted in written):
            del sys.modules[name]


def load_error(ref: object) -> FlowLoadError:
    with pytest.raises(FlowLoadError) as caught:
        load_flow(ref)  # type: ignore[arg-type]
    return caught.value


def test_a_reference_resolves_to_the_flow(write_module: WriteModule) -> None:
    write_module("flowmod_ok", FLOW_MODULE)
    flow = load_flow("flowmod_ok:flow")
    assert isinstance(flow, Flow)
    assert flow.slug == "loaded"
    assert [step.slug for step in flow.steps] == ["first"]
    # The same object on every call, so steps keep one identity per process.
    assert load_flow(" flowmod_ok : flow ") is flow


def test_dotted_modules_and_attributes_are_followed(write_module: WriteModule) -> None:
    write_module("flowpkg_ok.flows", FLOW_MODULE)
    assert load_flow("flowpkg_ok.flows:Holder.flow").slug == "loaded"


@pytest.mark.parametrize("ref", ["flowmod_ok", "flowmod_ok:", ":flow", "", ":"])
def test_malformed_references_show_the_expected_form(ref: str) -> None:
    error = load_error(ref)
    assert str(error) == (
        f"invalid flow reference {ref!r}: write it as 'module:attribute', for example "
        "'my_app.flows:site_report'"
    )
    assert error.ref == ref


def test_a_reference_must_be_a_string() -> None:
    assert "a flow reference must be a string" in str(load_error(42))


def test_a_missing_module_is_reported_with_the_path_hint() -> None:
    message = str(load_error("no_such_module_here.flows:flow"))
    assert "cannot load flow 'no_such_module_here.flows:flow'" in message
    assert "module 'no_such_module_here.flows' was not found" in message
    assert "sys.path / PYTHONPATH" in message


def test_a_failing_import_inside_the_module_is_not_called_missing(
    write_module: WriteModule,
) -> None:
    write_module("flowmod_broken", "import no_such_dependency_module\n")
    error = load_error("flowmod_broken:flow")
    message = str(error)
    assert "importing module 'flowmod_broken' failed" in message
    assert "no_such_dependency_module" in message
    assert isinstance(error.__cause__, ModuleNotFoundError)


def test_definition_errors_in_the_module_surface_unchanged(write_module: WriteModule) -> None:
    write_module("flowmod_bad_def", 'from pgflow.flow import Flow\nFlow("no-dashes")\n')
    with pytest.raises(FlowDefinitionError, match="flow slug 'no-dashes'"):
        load_flow("flowmod_bad_def:flow")


def test_a_missing_attribute_is_named(write_module: WriteModule) -> None:
    write_module("flowmod_attr", FLOW_MODULE)
    assert str(load_error("flowmod_attr:flw")) == (
        "cannot load flow 'flowmod_attr:flw': module 'flowmod_attr' has no attribute 'flw'"
    )
    assert str(load_error("flowmod_attr:Holder.flw")) == (
        "cannot load flow 'flowmod_attr:Holder.flw': 'flowmod_attr:Holder' has no attribute 'flw'"
    )


def test_an_attribute_that_is_not_a_flow_is_rejected(write_module: WriteModule) -> None:
    write_module("flowmod_other", FLOW_MODULE)
    message = str(load_error("flowmod_other:not_a_flow"))
    assert "cannot load flow 'flowmod_other:not_a_flow': it is a dict, not a pgflow Flow" in message
    assert "is a function, not a pgflow Flow" in str(load_error("flowmod_other:first"))


# -- a module that fails while being imported: what failed and where, in the user's file ---------


def test_a_syntax_error_names_its_file_and_line(write_module: WriteModule, tmp_path: Path) -> None:
    write_module("flowmod_syntax", 'from pgflow.flow import Flow\nflow = Flow("x"\n')
    message = str(load_error("flowmod_syntax:flow"))
    assert message.startswith(
        "cannot load flow 'flowmod_syntax:flow': importing module 'flowmod_syntax' failed: "
        "SyntaxError: "
    )
    assert f'(at {tmp_path / "flowmod_syntax.py"}:2: flow = Flow("x")' in message


def test_an_exception_at_import_points_at_the_raising_line(
    write_module: WriteModule, tmp_path: Path
) -> None:
    write_module(
        "flowmod_env",
        'import os\nfrom pgflow.flow import Flow\nKEY = os.environ["PGFLOW_NO_SUCH_VAR"]\n',
    )
    error = load_error("flowmod_env:flow")
    # os.environ raises inside the standard library; the location is the user's line
    assert str(error) == (
        "cannot load flow 'flowmod_env:flow': importing module 'flowmod_env' failed: "
        f"KeyError: 'PGFLOW_NO_SUCH_VAR' (at {tmp_path / 'flowmod_env.py'}:3: "
        'KEY = os.environ["PGFLOW_NO_SUCH_VAR"])'
    )
    assert isinstance(error.__cause__, KeyError)


def test_a_failing_import_deeper_in_the_users_code_points_there(
    write_module: WriteModule, tmp_path: Path
) -> None:
    write_module("flowmod_helper", "x = 1\nimport no_such_dependency_module\n")
    write_module("flowmod_outer", "import flowmod_helper\n")
    message = str(load_error("flowmod_outer:flow"))
    assert message.endswith(
        f"(at {tmp_path / 'flowmod_helper.py'}:2: import no_such_dependency_module)"
    )


def test_a_definition_error_keeps_its_type_and_gains_the_location(
    write_module: WriteModule, tmp_path: Path
) -> None:
    write_module(
        "flowmod_step_kw",
        'from pgflow.flow import Flow\nflow = Flow("x")\n@flow.step(retrys=2)\ndef a(v):\n'
        "    return v\n",
    )
    with pytest.raises(FlowDefinitionError) as caught:
        load_flow("flowmod_step_kw:flow")
    assert "unknown option 'retrys'" in str(caught.value)
    assert str(caught.value).endswith(
        f"(at {tmp_path / 'flowmod_step_kw.py'}:3: @flow.step(retrys=2))"
    )
    assert (caught.value.flow_slug, caught.value.step_slug) == ("x", "a")

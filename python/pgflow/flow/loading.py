"""Resolve a "package.module:attribute" reference to a Flow.

Workers in other processes receive flows by reference, since functions and the closures around
them cannot be sent between processes reliably.
"""

from __future__ import annotations

import importlib

from pgflow.errors import FlowLoadError
from pgflow.flow.definition import Flow


def load_flow(ref: str) -> Flow:
    """Import `module` and return its Flow `attribute` (dots allowed: `module:obj.flow`)."""
    if not isinstance(ref, str):
        raise FlowLoadError(
            f"a flow reference must be a string like 'my_app.flows:site_report', got "
            f"{type(ref).__name__} ({ref!r})",
            ref=repr(ref),
        )
    module_name, sep, attribute_path = ref.partition(":")
    module_name, attribute_path = module_name.strip(), attribute_path.strip()
    if not sep or not module_name or not attribute_path:
        raise FlowLoadError(
            f"invalid flow reference {ref!r}: write it as 'module:attribute', for example "
            "'my_app.flows:site_report'",
            ref=ref,
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_same_or_parent(exc.name, module_name):
            raise FlowLoadError(
                f"cannot load flow {ref!r}: module {module_name!r} was not found; check the "
                "spelling and that its directory is on the Python path (sys.path / PYTHONPATH)",
                ref=ref,
            ) from exc
        raise FlowLoadError(
            f"cannot load flow {ref!r}: importing module {module_name!r} failed: {exc}",
            ref=ref,
        ) from exc
    target: object = module
    walked: list[str] = []
    for part in attribute_path.split("."):
        if not hasattr(target, part):
            owner = (
                repr(f"{module_name}:{'.'.join(walked)}") if walked else f"module {module_name!r}"
            )
            raise FlowLoadError(
                f"cannot load flow {ref!r}: {owner} has no attribute {part!r}",
                ref=ref,
            )
        target = getattr(target, part)
        walked.append(part)
    if not isinstance(target, Flow):
        raise FlowLoadError(
            f"cannot load flow {ref!r}: it is a {type(target).__name__}, not a pgflow Flow; "
            'point the reference at the object created with Flow("...")',
            ref=ref,
        )
    return target


def _is_same_or_parent(missing: str, wanted: str) -> bool:
    return wanted == missing or wanted.startswith(missing + ".")

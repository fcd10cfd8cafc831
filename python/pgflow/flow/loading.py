"""Resolve a "package.module:attribute" reference to a Flow.

Workers in other processes receive flows by reference, since functions and the closures around
them cannot be sent between processes reliably.
"""

from __future__ import annotations

import importlib
import linecache
import sysconfig
import traceback
from pathlib import Path

from pgflow.errors import FlowDefinitionError, FlowLoadError, PgflowError
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
        raise _import_failed(ref, module_name, exc) from exc
    except FlowDefinitionError as exc:
        # It says what is wrong; add where, keeping its type for callers that catch it.
        where = _location(exc)
        if where is None:
            raise
        raise FlowDefinitionError(
            f"{exc} (at {where})", flow_slug=exc.flow_slug, step_slug=exc.step_slug
        ) from exc
    except PgflowError:
        raise  # pgflow's own errors already say what to fix
    except Exception as exc:
        # The user's module is broken, not pgflow: say where, without a traceback.
        raise _import_failed(ref, module_name, exc) from exc
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


def _import_failed(ref: str, module_name: str, exc: BaseException) -> FlowLoadError:
    where = _location(exc)
    return FlowLoadError(
        f"cannot load flow {ref!r}: importing module {module_name!r} failed: "
        f"{type(exc).__name__}: {_reason(exc)}" + (f" (at {where})" if where else ""),
        ref=ref,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return exc.msg  # its str() repeats file and line, which the location already gives
    return str(exc) or "(no message)"


def _location(exc: BaseException) -> str | None:
    """`file:line: source line` of the user's code that raised `exc` while being imported."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return _format_location(exc.filename, exc.lineno, exc.text)
    frames = traceback.extract_tb(exc.__traceback__)
    # The deepest frame in the user's code: not importlib's, the standard library's, an
    # installed package's or pgflow's own (a definition error raised inside `Flow`).
    for frame in reversed(frames):
        if _is_users(frame.filename):
            return _format_location(frame.filename, frame.lineno, frame.line)
    for frame in reversed(frames):
        if not frame.filename.startswith("<"):
            return _format_location(frame.filename, frame.lineno, frame.line)
    return None


def _format_location(filename: str, lineno: int | None, text: str | None) -> str:
    line = (text or linecache.getline(filename, lineno or 0)).strip()
    return f"{filename}:{lineno}" + (f": {line}" if line else "")


_NOT_USERS = tuple(
    {
        str(Path(directory).resolve())
        for directory in (
            *(sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")),
            str(Path(__file__).resolve().parents[1]),  # the pgflow package
        )
    }
)


def _is_users(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return False
    resolved = Path(filename).resolve()
    return not any(resolved.is_relative_to(directory) for directory in _NOT_USERS)

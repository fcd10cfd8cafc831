"""`pgflow plugins` lists every plugin with where it comes from, what it registers and which
hooks it implements; a plugin that fails to load is listed with its error while the others
keep working, and a worker asked for an executor nobody provides refuses to start, naming the
plugin that failed.

Plugins come from a real distribution (a `.dist-info` with an entry point, on PYTHONPATH) and
from `PGFLOW_PLUGINS`. No database is needed.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]

NOWHERE = "postgresql://nobody@127.0.0.1:1/nothing"

GOOD_PLUGIN = """
from pgflow.executors import InlineExecutor
from pgflow.hooks import hookimpl


class TinyExecutor(InlineExecutor):
    name = "tiny"


class Json:
    def encode(self, value):
        return b"null"

    def decode(self, data):
        return None


@hookimpl
def pgflow_register_executors(register):
    register("tiny", TinyExecutor)


@hookimpl
def pgflow_register_serializers(register):
    register("json-null", Json())


@hookimpl
def pgflow_event(event):
    pass
"""

BROKEN_PLUGIN = 'raise RuntimeError("the plugin is broken on purpose")\n'

# a plugin that stays idle as configured: it implements no hook
IDLE_PLUGIN = '"""Nothing to do here."""\n'

USERS_FLOWS = """
from pgflow import Flow

flow = Flow("plugins_cli")


@flow.step()
def only(value):
    return value
"""


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    (tmp_path / "good_pgflow_plugin.py").write_text(GOOD_PLUGIN)
    (tmp_path / "broken_pgflow_plugin.py").write_text(BROKEN_PLUGIN)
    (tmp_path / "idle_pgflow_plugin.py").write_text(IDLE_PLUGIN)
    (tmp_path / "users_flows.py").write_text(USERS_FLOWS)
    dist_info = tmp_path / "good_pgflow_plugin-1.2.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: good-pgflow-plugin\nVersion: 1.2.3\n"
    )
    (dist_info / "entry_points.txt").write_text("[pgflow]\ngood = good_pgflow_plugin\n")
    return tmp_path


def env_for(directory: Path, listed: str | None) -> dict[str, str | None]:
    path = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "PGFLOW_PLUGINS": listed, "PGFLOW_DISABLE_PLUGINS": None}


def listed_sections(listing: str, *names: str) -> str:
    """The sections of a `pgflow plugins` listing for the plugins `names`, in listed order: the
    plugins of other installed distributions (pgflow-prometheus in CI) are not this test's."""
    sections = re.split(r"(?m)^(?=\S)", listing)
    return "".join(section for section in sections if section.split("\n", 1)[0] in names)


def test_plugins_lists_each_plugin_with_its_origin_registrations_and_hooks(
    plugin_dir: Path, run_pgflow: Run
) -> None:
    result = run_pgflow("plugins", env=env_for(plugin_dir, None))
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert listed_sections(result.stdout, "pgflow.plugins.builtin", "good") == (
        "pgflow.plugins.builtin\n"
        "  from: builtin\n"
        "  executors: thread, process, asyncio, inline\n"
        "  serializers: msgspec\n"
        "  hooks: pgflow_register_executors, pgflow_register_serializers\n"
        "good\n"
        "  from: entry point good = good_pgflow_plugin from distribution good-pgflow-plugin 1.2.3\n"
        "  executors: tiny\n"
        "  serializers: json-null\n"
        "  hooks: pgflow_event, pgflow_register_executors, pgflow_register_serializers\n"
    )


def test_a_plugin_that_fails_to_load_is_listed_with_its_error(
    plugin_dir: Path, run_pgflow: Run
) -> None:
    result = run_pgflow("plugins", env=env_for(plugin_dir, "broken_pgflow_plugin"))
    assert result.returncode == 1, (result.stdout, result.stderr)
    # the others are still listed, with what they register
    assert "good\n" in result.stdout and "  executors: tiny\n" in result.stdout
    assert (
        "broken_pgflow_plugin (FAILED TO LOAD)\n"
        "  from: module listed in PGFLOW_PLUGINS\n"
        "  error: plugin 'broken_pgflow_plugin' (module listed in PGFLOW_PLUGINS) failed to load: "
        "RuntimeError: the plugin is broken on purpose; fix or uninstall it, or set "
        "PGFLOW_DISABLE_PLUGINS=broken_pgflow_plugin to run without it\n"
    ) in result.stdout
    assert "Traceback" not in result.stderr
    # logged once as a warning, then the one-line verdict
    assert result.stderr.count("failed to load: RuntimeError") == 1, result.stderr
    assert result.stderr.endswith("error: 1 plugin(s) failed to load: broken_pgflow_plugin\n")


def test_a_plugin_with_no_hook_is_listed_as_doing_nothing(
    plugin_dir: Path, run_pgflow: Run
) -> None:
    result = run_pgflow("plugins", env=env_for(plugin_dir, "idle_pgflow_plugin"))
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert listed_sections(result.stdout, "idle_pgflow_plugin") == (
        "idle_pgflow_plugin\n"
        "  from: module listed in PGFLOW_PLUGINS\n"
        "  hooks: none (it does nothing as configured)\n"
    )


def test_a_disabled_plugin_is_listed_as_disabled(plugin_dir: Path, run_pgflow: Run) -> None:
    env = env_for(plugin_dir, "broken_pgflow_plugin")
    env["PGFLOW_DISABLE_PLUGINS"] = "broken_pgflow_plugin,good"
    result = run_pgflow("plugins", env=env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "good (disabled)\n" in result.stdout
    assert "broken_pgflow_plugin (disabled)\n" in result.stdout
    assert "tiny" not in result.stdout


def test_a_worker_refuses_an_executor_nobody_provides_naming_the_failed_plugin(
    plugin_dir: Path, run_pgflow: Run
) -> None:
    env = env_for(plugin_dir, "broken_pgflow_plugin")
    # the working plugin's executor is there: the worker gets as far as the database
    reached = run_pgflow(
        "worker", "users_flows:flow", "--executor", "tiny", "--dsn", NOWHERE, env=env
    )
    assert reached.returncode == 1
    assert "unknown executor" not in reached.stderr
    result = run_pgflow(
        "worker", "users_flows:flow", "--executor", "trio", "--dsn", NOWHERE, env=env
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    error = result.stderr.splitlines()[-1]
    assert error.startswith("error: unknown executor 'trio'"), result.stderr
    assert "tiny" in error  # the known ones are listed
    assert "plugin 'broken_pgflow_plugin'" in error and "failed to load" in error
    assert "Traceback" not in result.stderr

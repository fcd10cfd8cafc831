"""`pgflow dashboard` without the `dashboard` extra says which extra to install; the core
imports without it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pgflow.cli.app import main


def test_without_the_extra_the_command_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` raises ImportError
    assert main(["dashboard", "--dsn", "postgresql://nobody@127.0.0.1:1/none"]) == 1
    err = capsys.readouterr().err
    assert "the dashboard needs the `dashboard` extra (uvicorn is missing)" in err
    assert "pip install 'pgflow-py[dashboard]'" in err


def test_the_core_imports_without_starlette_or_uvicorn() -> None:
    code = (
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlette', 'uvicorn'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "import pgflow, pgflow.cli.app, pgflow.client, pgflow.worker\n"
        "pgflow.cli.app.build_parser()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr

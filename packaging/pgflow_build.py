"""The PEP 517 build backend: maturin's, with portable Linux wheels by default.

maturin, run by pip (`pip wheel .`, `python -m build`), tags a wheel for the building machine
only (`linux_x86_64`, linked against its glibc), which no other machine may install. Here a
Linux wheel is built against glibc 2.17 with zig (the `ziglang` build requirement) and tagged
manylinux2014, so the wheel that `pip wheel .` leaves is the one we ship. Editable installs
(`pip install -e .`) and builds given their own maturin arguments (the `build-args` config
setting or MATURIN_PEP517_ARGS) are left as maturin makes them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import maturin
from maturin import (  # noqa: F401  (the hooks we leave as they are)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

PORTABLE_LINUX_ARGS = "--compatibility manylinux2014 --zig --strip"


def _chosen_by_caller(config_settings: Mapping[str, Any] | None) -> bool:
    if os.environ.get("MATURIN_PEP517_ARGS"):
        return True
    return bool(config_settings) and any(
        key in config_settings for key in ("build-args", "maturin.build-args")
    )


def build_wheel(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    if sys.platform.startswith("linux") and not _chosen_by_caller(config_settings):
        config_settings = {**(config_settings or {}), "build-args": PORTABLE_LINUX_ARGS}
    return str(maturin.build_wheel(wheel_directory, config_settings, metadata_directory))

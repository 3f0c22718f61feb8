"""Markers that depend on the machine: root for namespaces, binaries for decoders.

Under CI (``CI`` set) a missing prerequisite is a failure, not a skip: ``make
test`` installs everything, so a skip there would hide a broken set-up.
"""

import os
import shutil

import pytest

IN_CI = bool(os.environ.get("CI"))


def _missing(item) -> str | None:
    if item.get_closest_marker("netns") and os.geteuid() != 0:
        return "needs root for network namespaces"
    marker = item.get_closest_marker("needs_binary")
    if marker:
        for binary in marker.args:
            if shutil.which(binary) is None:
                return f"needs the {binary} binary"
    return None


def pytest_runtest_setup(item):
    reason = _missing(item)
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI must have it: make test installs it)")
    pytest.skip(reason)

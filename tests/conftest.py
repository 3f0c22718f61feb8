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


# `make test` runs two pytest-xdist workers (-n 2 --dist loadgroup). The namespace tests all
# go to one of them and run there one after the other, in their usual order, as without
# xdist: they time packets, flood sockets and measure a router's CPU, and must not do that
# beside each other. The unit tests, which only need a CPU, run on the other worker
# meanwhile, while the namespace tests mostly wait on the network and their routers.
# The scheduler knows only node ids, so the namespace tests are told by their folder.
NAMESPACE_TEST_FOLDERS = ("tests/netns/", "tests/peers/")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("netns") and not item.nodeid.startswith(NAMESPACE_TEST_FOLDERS):
            raise pytest.UsageError(
                f"{item.nodeid} is a netns test outside {' and '.join(NAMESPACE_TEST_FOLDERS)}: "
                "make test would run it beside the other namespace tests; move it there")


@pytest.hookimpl(optionalhook=True)   # a hook of pytest-xdist, which a run may leave out
def pytest_xdist_make_scheduler(config, log):
    # xdist's own loadgroup reads an xdist_group mark through the node id, which pytest 9.2
    # no longer lets it change (pytest-xdist issue 1386): it would spread these tests over
    # both workers without a word.
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NamespaceTestsTogether(LoadScopeScheduling):
        """One work unit for all the namespace tests, one a module for the others; the
        biggest unit is handed out first (xdist's --loadscope-reorder, on by default)."""

        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(NAMESPACE_TEST_FOLDERS):
                return "netns"
            return super()._split_scope(nodeid)

    return NamespaceTestsTogether(config, log)

"""Capabilities and users without root: what /proc says is missing, the lookups behind
``--user`` and ``--group``, and the router dropping to a user once everything is made (the
drop itself, and all that must work after it, is tests/netns/test_privileges.py)."""

import grp
import os
import pwd

import pytest

from tunnelrouter.config import parse_config
from tunnelrouter.io import privileges
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.router import Router, StartError

from tests.tunnelrouter.doubles import MemorySystem

STATUS = "Name:\tpython3\nCapInh:\t0000000000000000\nCapPrm:\t{bits}\nCapEff:\t{bits}\n"
IPIP = {"tunnels": {"ipip1": {"mode": "ipip", "local": "10.0.0.1", "remote": "10.0.0.2"}}}


@pytest.mark.parametrize("bits, missing", [
    ("0000000000003000", []),
    ("0000000000001000", ["CAP_NET_RAW"]),
    ("0000000000000000", ["CAP_NET_ADMIN", "CAP_NET_RAW"]),
    ("000001ffffffffff", []),
])
def test_missing_reads_the_effective_set(tmp_path, bits, missing):
    status = tmp_path / "status"
    status.write_text(STATUS.format(bits=bits))
    assert privileges.missing(privileges.ROUTER_NEEDS, str(status)) == missing


def test_switching_needs_setuid_and_setgid(tmp_path):
    status = tmp_path / "status"
    status.write_text(STATUS.format(bits="0000000000003040"))   # net admin, raw, setgid
    assert privileges.missing(privileges.SWITCHING_NEEDS, str(status)) == ["CAP_SETUID"]


def test_a_user_by_name_or_number_comes_with_its_own_group():
    me = pwd.getpwuid(os.getuid())
    expected = privileges.Account(me.pw_name, me.pw_uid, grp.getgrgid(me.pw_gid).gr_name,
                                  me.pw_gid)
    assert privileges.account(me.pw_name) == expected == privileges.account(str(me.pw_uid))


def test_unknown_users_and_groups_are_told_apart():
    with pytest.raises(ValueError, match="no user 'no-such-user-here' on this host"):
        privileges.account("no-such-user-here")
    with pytest.raises(ValueError, match="no group 'no-such-group-here' on this host"):
        privileges.group("no-such-group-here")
    group = grp.getgrgid(os.getgid())
    assert privileges.group(group.gr_name) == privileges.group(str(group.gr_gid)) == \
        (group.gr_name, group.gr_gid)


class DroppingSystem(MemorySystem):
    def __init__(self, fail: bool = False):
        super().__init__()
        self.dropped = []
        self.fail = fail

    def drop_privileges(self, account) -> None:
        if self.fail:
            raise SystemProblem("cannot drop privileges to x: Operation not permitted")
        self.dropped.append(account)


def me() -> privileges.Account:
    return privileges.account(pwd.getpwuid(os.getuid()).pw_name)


def test_the_router_drops_once_everything_is_made_and_the_control_socket_is_the_users(
        tmp_path):
    system = DroppingSystem()
    control = tmp_path / "run" / "site.sock"
    config = tmp_path / "site.yaml"
    config.write_text("{}")
    router = Router(parse_config(IPIP), str(control), system, config_path=str(config),
                    drop_to=me())
    try:
        router.start()
        assert system.dropped == [me()] and router.drop_to is None
        assert "ipip1" in system.links and control.exists()
        assert (control.stat().st_uid, control.stat().st_gid) == (me().uid, me().gid)
        assert (control.parent.stat().st_uid, control.parent.stat().st_gid) == \
            (me().uid, me().gid)
    finally:
        router.close()


def test_a_drop_that_fails_stops_the_start_and_undoes_it(tmp_path):
    system = DroppingSystem(fail=True)
    router = Router(parse_config(IPIP), str(tmp_path / "site.sock"), system, drop_to=me())
    with pytest.raises(StartError, match="cannot drop privileges to x"):
        router.start()
    assert system.links == {} and not (tmp_path / "site.sock").exists()

"""Capabilities and users: what the process may do, and dropping all but what the router needs.

``run --user NAME`` starts as root, makes everything (devices, sockets, the control socket),
then becomes NAME keeping only CAP_NET_ADMIN (devices, addresses, routes, the per-device
sysctls) and CAP_NET_RAW (raw sockets), permitted and effective; nothing inheritable or
ambient, so that nothing it starts (the forwarder) has any; no supplementary groups; and
no_new_privs, so that no exec can gain anything back.

Python has setresuid and setgroups but no capset and no prctl: those two are called from
libc with ctypes (python-prctl would do it too, but needs building against libcap for
five calls). Capabilities belong to a thread: the drop checks that the process has one.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
from typing import NamedTuple

from tunnelrouter.io.errors import SystemProblem

# linux/capability.h
CAPABILITIES = {"CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
ROUTER_NEEDS = ("CAP_NET_ADMIN", "CAP_NET_RAW")
SWITCHING_NEEDS = ("CAP_SETUID", "CAP_SETGID")
_CAPABILITY_VERSION_3 = 0x20080522
# linux/prctl.h
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4


class Account(NamedTuple):
    user: str
    uid: int
    group: str
    gid: int


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def account(user: str) -> Account:
    """The user (a name or a number) with its own group; ValueError with the message for an
    operator if there is no such user."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no user {user!r} on this host") from None
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)   # a group that /etc/group does not name is still a group
    return Account(entry.pw_name, entry.pw_uid, group, entry.pw_gid)


def group(name: str) -> tuple[str, int]:
    """The group (a name or a number): ``(name, gid)``; ValueError if there is none."""
    try:
        entry = grp.getgrgid(int(name)) if name.isdigit() else grp.getgrnam(name)
    except KeyError:
        raise ValueError(f"no group {name!r} on this host") from None
    return entry.gr_name, entry.gr_gid


def effective(status_path: str = "/proc/self/status") -> int:
    """The effective capability set, as bits."""
    with open(status_path) as status:
        return next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))


def missing(names, status_path: str = "/proc/self/status") -> list[str]:
    """Those of the capabilities ``names`` the process does not have in effect."""
    bits = effective(status_path)
    return [name for name in names if not bits >> CAPABILITIES[name] & 1]


def is_already(target: Account) -> bool:
    """The process runs as ``target`` already, with no other group: nothing to switch."""
    return (set(os.getresuid()) == {target.uid} and set(os.getresgid()) == {target.gid}
            and set(os.getgroups()) <= {target.gid})


def mask(names) -> int:
    bits = 0
    for name in names:
        bits |= 1 << CAPABILITIES[name]
    return bits


def drop(target: Account, keep=ROUTER_NEEDS) -> None:
    """Become ``target`` keeping only the capabilities ``keep``; SystemProblem if any step
    fails (the caller then stops: half-dropped is not a state to run in)."""
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise SystemProblem(f"cannot drop privileges: the process has {threads} threads, "
                            "and capabilities belong to one")
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        if not is_already(target):
            # Keep the permitted set across the change of user (the kernel clears it when
            # the last uid 0 goes, unless told); the effective set is cleared regardless.
            _prctl(libc, "keep capabilities", _PR_SET_KEEPCAPS, 1)
            os.setgroups([])
            os.setresgid(target.gid, target.gid, target.gid)
            os.setresuid(target.uid, target.uid, target.uid)
            _prctl(libc, "stop keeping capabilities", _PR_SET_KEEPCAPS, 0)
        _capset(libc, mask(keep))
        # Ambient capabilities need inheritable ones, so capset cleared them already; this
        # says it, for a kernel that would not.
        _prctl(libc, "clear the ambient capabilities", _PR_CAP_AMBIENT,
               _PR_CAP_AMBIENT_CLEAR_ALL)
        _prctl(libc, "set no_new_privs", _PR_SET_NO_NEW_PRIVS, 1)
    except OSError as error:
        raise SystemProblem(f"cannot drop privileges to {target.user}: "
                            f"{error.strerror or error}") from None


def clear_ambient() -> None:
    """Ambient capabilities are for exec: a child of ours needs none of them."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        _prctl(libc, "clear the ambient capabilities", _PR_CAP_AMBIENT,
               _PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass   # a kernel before 4.3 has none to clear


def set_no_new_privs() -> None:
    """No exec from here on gains privileges (set-user-ID, file capabilities)."""
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, "set no_new_privs", _PR_SET_NO_NEW_PRIVS, 1)


def _capset(libc, bits: int) -> None:
    header = _Header(_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for word in (0, 1):
        part = bits >> (32 * word) & 0xFFFFFFFF
        data[word].effective = data[word].permitted = part
    if libc.capset(ctypes.byref(header), data) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"capset: {os.strerror(number)}")


def _prctl(libc, what: str, option: int, argument: int = 0) -> None:
    if libc.prctl(option, ctypes.c_ulong(argument), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")

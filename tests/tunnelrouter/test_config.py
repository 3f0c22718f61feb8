"""Configuration: every problem of a file at once, each at its key path and line, and
nothing but messages, however broken or hostile the file."""

import functools
import ipaddress
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from encap.ecn import EcnMode
from tunnelrouter import config as config_module
from tunnelrouter.cli import main
from tunnelrouter.config import MAX_FILE_BYTES, ConfigError, load_config, parse_config, render
from tunnelrouter.yaml_reader import Problem, read_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "site-a.yaml"
BROKEN = Path(__file__).resolve().parent / "broken_configs"
TUNNELROUTER = str(Path(sys.executable).parent / "tunnelrouter")   # the installed command
GRE = {"mode": "gre", "local": "10.0.0.1", "remote": "10.0.0.2"}
VXLAN = {"mode": "vxlan", "local": "10.0.0.1", "remotes": ["10.0.0.2", "10.0.0.3"], "id": 42}
IPIP = {"mode": "ipip", "local": "10.0.0.1", "remote": "10.0.0.2"}


def problems(tunnels: dict) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"tunnels": tunnels})
    return caught.value.problems


def file_problems(tmp_path: Path, text: str | bytes) -> list[Problem]:
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def at(found: list[Problem]) -> list[tuple[str, int | None]]:
    return [(problem.path, problem.line) for problem in found]


# -- what a valid file gives ------------------------------------------------------------

def test_the_example_configuration_is_valid():
    config = load_config(EXAMPLE)
    assert list(config.tunnels) == ["gre1", "vx1", "ipip1", "six1"]
    assert config.tunnels["gre1"].key == 42 and config.tunnels["vx1"].id == 4242
    assert config.tunnels["ipip1"].ttl == "inherit"


def test_defaults_follow_the_kernel():
    tunnel = parse_config({"tunnels": {"gre1": GRE}}).tunnels["gre1"]
    assert (tunnel.ttl, tunnel.dscp, tunnel.ecn, tunnel.mtu, tunnel.mss_clamp) == \
        (64, 0, EcnMode.NORMAL, "auto", "auto")
    assert (tunnel.pmtu_discovery, tunnel.pmtu_timeout) == (True, 600)
    assert tunnel.device_mtu == 1476 and tunnel.mss_limits() == (1436, 1416)
    assert tunnel.name == "gre1" and tunnel.mode == "gre"


def test_fixed_mtu_and_mss_are_used_as_given():
    tunnel = parse_config({"tunnels": {"t": GRE | {"mtu": 1400, "mss-clamp": 1300}}}).tunnels["t"]
    assert tunnel.device_mtu == 1400 and tunnel.mss_limits() == (1300, 1300)
    off = parse_config({"tunnels": {"t": GRE | {"mss-clamp": "off"}}}).tunnels["t"]
    assert off.mss_limits() is None


def test_the_mss_follows_the_mtu_the_tunnel_carries():
    tunnel = parse_config({"tunnels": {"gre1": GRE}}).tunnels["gre1"]
    assert tunnel.mss_limits(1376) == (1336, 1316)
    # Below 1280, IPv6 still goes as 1280-byte packets, in outer fragments (RFC 4213 §3.2).
    assert tunnel.mss_limits(1256) == (1216, 1220)


def test_vxlan_peers_merge_remote_and_remotes():
    tunnel = parse_config({"tunnels": {"v": VXLAN | {"remote": "10.0.0.2"}}}).tunnels["v"]
    assert [str(p) for p in tunnel.peers] == ["10.0.0.2", "10.0.0.3"]


def test_the_control_socket_is_named_after_the_file_unless_given(tmp_path):
    config = parse_config({"tunnels": {"t": GRE}})
    assert config.control_path("/etc/tunnelrouter/site-a.yaml") == "/run/tunnelrouter/site-a.sock"
    given_one = parse_config({"control-socket": str(tmp_path / "c.sock"), "tunnels": {"t": GRE}})
    assert given_one.control_path("/etc/tunnelrouter/site-a.yaml") == str(tmp_path / "c.sock")


def load_config_text(text: str):
    data, lines, found = read_yaml(text)
    return parse_config(data, lines, found)


def test_a_yaml_merge_key_is_read_as_yaml_means_it():
    config = load_config_text("tunnels:\n  t:\n    <<: {mode: gre, local: 10.0.0.1}\n"
                              "    remote: 10.0.0.2\n")
    assert config.tunnels["t"].mode == "gre" and str(config.tunnels["t"].local) == "10.0.0.1"


# -- one problem: its key path and what is wrong ----------------------------------------

@pytest.mark.parametrize("tunnel, path, words", [
    (GRE | {"colour": "red"}, "tunnels.t.colour", "unknown key"),
    (GRE | {"remote": "10.0.0.300"}, "tunnels.t.remote", "10.0.0.300"),
    (GRE | {"addresses": ["192.168.1.1/33"]}, "tunnels.t.addresses[0]", "not a valid"),
    (GRE | {"routes": ["10.1.0.0/16", "bad"]}, "tunnels.t.routes[1]", "not a valid"),
    (GRE | {"ttl": 0}, "tunnels.t.ttl", "'inherit'"),
    (GRE | {"ttl": "always"}, "tunnels.t.ttl", "'inherit'"),
    (GRE | {"key": -1}, "tunnels.t.key", "greater than or equal to 0"),
    (GRE | {"key": 1 << 32}, "tunnels.t.key", "less than or equal to 4294967295"),
    (GRE | {"mtu": 40}, "tunnels.t.mtu", "'auto'"),
    (GRE | {"mode": "geneve"}, "tunnels.t.mode", "the modes are gre, gretap, ipip, sit, vxlan"),
    (VXLAN | {"id": 1 << 24}, "tunnels.t.id", "16777215"),
    (VXLAN | {"key": 1}, "tunnels.t.key", "an option of mode gre and gretap; mode vxlan has none"),
    (GRE | {"id": 5}, "tunnels.t.id", "an option of mode vxlan; mode gre has none"),
    (IPIP | {"sequence": True}, "tunnels.t.sequence", "an option of mode gre and gretap"),
    ({"mode": "vxlan", "local": "10.0.0.1", "remotes": ["10.0.0.2"]}, "tunnels.t.id", "missing"),
    ({"mode": "vxlan", "local": "10.0.0.1", "id": 1}, "tunnels.t.remotes", "'remote' or 'remotes'"),
    ({"mode": "gre", "local": "10.0.0.1"}, "tunnels.t.remote", "missing"),
    ({"mode": "ipip", "remote": "10.0.0.1"}, "tunnels.t.local", "missing"),
    ({"local": "10.0.0.1", "remote": "10.0.0.2"}, "tunnels.t.mode", "missing: one of gre"),
    (GRE | {"remote": "2001:db8::1"}, "tunnels.t.remote", "IPv6"),
    (VXLAN | {"remotes": ["10.0.0.2", "2001:db8::3"]}, "tunnels.t.remotes[1]", "IPv6"),
    (GRE | {"local": "2001:db8::1", "remote": "2001:db8::2"}, "tunnels.t.local",
     "IPv6 underlay is not supported"),
    ({"mode": "sit", "local": "10.0.0.1", "remote": "10.0.0.2", "addresses": ["10.9.0.1/30"]},
     "tunnels.t.addresses[0]", "does not carry"),
    (IPIP | {"routes": ["fd00::/8"]}, "tunnels.t.routes[0]", "does not carry"),
    (GRE | {"mtu": 1490}, "tunnels.t.mtu", "1476"),
    (GRE | {"underlay-mtu": 80}, "tunnels.t.underlay-mtu", "less than 68"),
    (VXLAN | {"fdb": [{"mac": "02:00:00:00:00", "remote": "10.0.0.2"}]}, "tunnels.t.fdb[0].mac",
     "MAC"),
    (VXLAN | {"fdb": [{"mac": 9783936001, "remote": "10.0.0.2"}]}, "tunnels.t.fdb[0].mac",
     "put it in quotes"),
    (VXLAN | {"fdb": [{"mac": "02:00:00:00:00:01", "remote": "2001:db8::9"}]},
     "tunnels.t.fdb[0].remote", "not IPv4"),
    (VXLAN | {"max-fdb": 1, "fdb": [{"mac": "02:00:00:00:00:01", "remote": "10.0.0.2"},
                                    {"mac": "02:00:00:00:00:02", "remote": "10.0.0.3"}]},
     "tunnels.t.fdb", "max-fdb is 1"),
    (GRE | {"tos": 0}, "tunnels.t.tos", "'dscp'"),
    (GRE | {"dscp": 64}, "tunnels.t.dscp", "'inherit'"),
    (GRE | {"ecn": "full"}, "tunnels.t.ecn", "'compatibility'"),
    (GRE | {"pmtu-timeout": 1}, "tunnels.t.pmtu-timeout", "greater than or equal to 5"),
    (GRE | {"icmp-rate-limit": -1}, "tunnels.t.icmp-rate-limit", "greater than or equal to 0"),
    (GRE | {"pmtu-discovery": "maybe"}, "tunnels.t.pmtu-discovery", "boolean"),
    (GRE | {"mss-clamp": 40}, "tunnels.t.mss-clamp", "'off'"),
    (VXLAN | {"port": 65536}, "tunnels.t.port", "less than or equal to 65535"),
    (GRE | {"addresses": "10.1.0.1/30"}, "tunnels.t.addresses", "tuple"),
])
def test_problems_name_the_key_and_the_problem(tunnel, path, words):
    found = problems({"t": tunnel})
    assert any(p.path == path and words in p.message for p in found), found


@pytest.mark.parametrize("data, path, words", [
    ({"tunnels": {"t": GRE}, "tunnel": {}}, "tunnel",
     "the file's keys are tunnels, control-socket"),
    ({"tunnels": {"t": GRE}, "control-socket": ""}, "control-socket", "the path of a socket"),
    ({"tunnels": {"t": GRE}, "control-socket": 5}, "control-socket", "the path of a socket"),
    ({"tunnels": None}, "tunnels", "missing"),
    ({"tunnels": {}}, "tunnels", "at least one tunnel"),
    ({"tunnels": [GRE]}, "tunnels", "a mapping of device names"),
    ({"tunnels": {"t": None}}, "tunnels.t", "a mapping of the tunnel's keys"),
    ({"tunnels": {"t": ["gre"]}}, "tunnels.t", "a mapping of the tunnel's keys"),
    ({"tunnels": {"t": GRE | {"mode": ["gre"]}}}, "tunnels.t.mode", "is not a mode"),
])
def test_problems_of_the_file_and_its_tunnels_name_their_key(data, path, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert any(p.path == path and words in p.message for p in caught.value.problems), \
        caught.value.problems


def test_a_problem_renders_as_file_line_path_message():
    assert render(Problem("tunnels.t.key", "bad", 7), "f.yaml") == "f.yaml:7: tunnels.t.key: bad"
    assert render(Problem("tunnels", "missing"), "f.yaml") == "f.yaml: tunnels: missing"
    assert render(Problem("", "not valid YAML: x", 3), "f.yaml") == "f.yaml:3: not valid YAML: x"
    assert render(Problem("tunnels.t.key", "bad", 7)) == "line 7: tunnels.t.key: bad"
    assert str(ConfigError([Problem("a", "x", 1), Problem("b", "y")])) == "line 1: a: x\nb: y"


# -- every problem, at once, where it is ------------------------------------------------

def test_five_mistakes_in_five_tunnels_are_reported_in_one_run_each_at_its_key_and_line():
    with pytest.raises(ConfigError) as caught:
        load_config(BROKEN / "five-mistakes.yaml")
    found = caught.value.problems
    assert at(found) == [("tunnels.gre1.ttl", 12), ("tunnels.gre2.colour", 17),
                         ("tunnels.vx1.id", 22), ("tunnels.six1.addresses[0]", 27),
                         ("tunnels.ipip1.routes[1]", 34)]
    assert [p.message.split(":")[0] for p in found] == [
        "300", "unknown key", "16777216", "10.4.0.1/30 is IPv4, which sit does not carry",
        "'10.6.0.0/33'"]


def test_every_problem_of_a_tunnel_is_reported_at_once():
    assert len(problems({"t": GRE | {"colour": 1, "ttl": 999}})) == 2


def test_a_wrong_key_does_not_hide_the_problems_of_the_others():
    # ttl is wrong by itself; the IPv6 route is wrong for ipip: the second check runs on
    # the keys that were right, with ttl's default.
    found = problems({"t": IPIP | {"ttl": 0, "routes": ["10.9.0.0/16", "fd00::/8"]}})
    assert {p.path for p in found} == {"tunnels.t.ttl", "tunnels.t.routes[1]"}
    found = problems({"t": {"mode": "sit", "local": "10.0.0.1", "remote": "10.0.0.2",
                            "mtu": "big", "addresses": ["10.9.0.1/30"]}})
    assert {p.path for p in found} == {"tunnels.t.mtu", "tunnels.t.addresses[0]"}


def test_a_tunnel_with_a_problem_does_not_hide_the_problems_between_the_others():
    found = problems({"bad": GRE | {"ttl": 0, "remote": "10.0.0.9"},
                      "a": GRE | {"routes": ["10.1.0.0/16"]},
                      "b": GRE | {"remote": "10.0.0.3", "routes": ["10.1.2.0/24"]}})
    assert {p.path for p in found} == {"tunnels.bad.ttl", "tunnels.b.routes[0]"}


YAML_LINES = """\
tunnels:
  gre1:
    mode: gre
    local: 10.0.0.1
    remote: 10.0.0.2
    ttl: 0
    addresses:
      - 10.1.0.1/30
      - 10.1.0.300/30
  vx1:
    mode: vxlan
    local: 10.0.0.1
    remote: 10.0.0.3
    fdb:
      - mac: "02:00:00:00:00:01"
        remote: 10.0.0.3
      - mac: "02:00:00"
        remote: 10.0.0.3
"""


def test_problems_found_in_a_file_carry_the_line_of_their_key(tmp_path):
    found = file_problems(tmp_path, YAML_LINES)
    assert sorted(at(found)) == [("tunnels.gre1.addresses[1]", 9), ("tunnels.gre1.ttl", 6),
                                 ("tunnels.vx1.fdb[1].mac", 17),
                                 # a key that is not there: the line of its tunnel
                                 ("tunnels.vx1.id", 10)]


def test_problems_are_listed_in_the_order_of_the_file(tmp_path):
    found = file_problems(tmp_path, YAML_LINES)
    assert [p.line for p in found] == sorted(p.line for p in found)


def test_a_problem_between_tunnels_carries_the_line_of_the_key_it_names(tmp_path):
    found = file_problems(tmp_path, "tunnels:\n"
                                    "  a: {mode: gre, local: 10.0.0.1, remote: 10.0.0.2,\n"
                                    "      routes: [10.1.0.0/16]}\n"
                                    "  b:\n"
                                    "    mode: gre\n"
                                    "    local: 10.0.0.1\n"
                                    "    remote: 10.0.0.3\n"
                                    "    routes:\n"
                                    "      - 10.2.0.0/16\n"
                                    "      - 10.1.7.0/24\n")
    assert at(found) == [("tunnels.b.routes[1]", 10)]


# -- YAML that repeats a key ------------------------------------------------------------

def test_a_tunnel_given_twice_is_a_problem_naming_both_lines(tmp_path):
    found = file_problems(tmp_path, "tunnels:\n  gre1:\n    mode: gre\n    local: 10.0.0.1\n"
                                    "    remote: 10.0.0.2\n  gre1:\n    mode: gre\n"
                                    "    local: 10.0.0.1\n    remote: 10.0.0.3\n")
    assert found == [Problem("tunnels.gre1", "given twice (first on line 2)", 6)]


def test_a_key_given_twice_in_a_tunnel_is_a_problem_naming_both_lines(tmp_path):
    found = file_problems(tmp_path, "tunnels:\n  gre1:\n    mode: gre\n    local: 10.0.0.1\n"
                                    "    key: 1\n    remote: 10.0.0.2\n    key: 2\n")
    assert found == [Problem("tunnels.gre1.key", "given twice (first on line 5)", 7)]


def test_a_top_level_key_given_twice_is_a_problem(tmp_path):
    tunnel = "{mode: gre, local: 10.0.0.1, remote: 10.0.0.2}"
    found = file_problems(tmp_path, f"tunnels:\n  a: {tunnel}\ntunnels:\n  b: {tunnel}\n")
    assert Problem("tunnels", "given twice (first on line 1)", 3) in found


# -- strict types: what YAML gives is taken as it is ------------------------------------

@pytest.mark.parametrize("key, value", [
    ("ttl", True), ("mtu", True), ("key", True), ("id", True),
    ("mtu", "1400"), ("ttl", "64"), ("key", "42"), ("id", "42"), ("port", "4789"),
    ("mtu", 1.5), ("mtu", 1400.0), ("ttl", 64.0), ("key", 1.0),
    ("pmtu-discovery", 1), ("pmtu-discovery", "yes"), ("mac-learning", "false"),
    ("ecn", "NORMAL"), ("mss-clamp", "OFF"),
])
def test_values_of_the_wrong_type_are_refused_not_converted(key, value):
    tunnel = (VXLAN if key in ("id", "port", "mac-learning") else GRE) | {key: value}
    [problem] = problems({"t": tunnel})
    assert problem.path == f"tunnels.t.{key}" and repr(value) in problem.message


@pytest.mark.parametrize("key, value", [
    ("local", 167772161), ("remote", 167772162), ("addresses", [24]), ("routes", [167772160]),
])
def test_a_number_is_not_an_address(key, value):
    [problem] = problems({"t": GRE | {key: value}})
    assert problem.path.startswith(f"tunnels.t.{key}")


def test_mac_learning_is_spelt_with_a_hyphen_only():
    tunnel = parse_config({"tunnels": {"t": VXLAN | {"mac-learning": False}}}).tunnels["t"]
    assert tunnel.mac_learning is False
    [problem] = problems({"t": VXLAN | {"mac_learning": False}})
    assert problem.path == "tunnels.t.mac_learning"


@pytest.mark.parametrize("tunnel, key, spelling", [
    (VXLAN, "mac_learning", "mac-learning"), (GRE, "pmtu_discovery", "pmtu-discovery"),
    (VXLAN, "max_fdb", "max-fdb"),
])
def test_a_key_spelt_with_an_underscore_is_told_its_spelling(tunnel, key, spelling):
    [problem] = problems({"t": tunnel | {key: 1}})
    assert f"mode {tunnel['mode']} has none" not in problem.message
    assert f"'{spelling}'" in problem.message


def test_mss_clamp_off_written_as_the_readme_shows_it_turns_the_clamp_off():
    config = load_config_text("tunnels:\n  t:\n    mode: gre\n    local: 10.0.0.1\n"
                              "    remote: 10.0.0.2\n    mss-clamp: off\n")
    assert config.tunnels["t"].mss_limits() is None


def test_mss_clamp_on_is_no_setting():
    [problem] = problems({"t": GRE | {"mss-clamp": True}})
    assert problem.path == "tunnels.t.mss-clamp"


def test_a_name_written_inside_a_tunnel_is_refused():
    found = problems({"gre1": GRE | {"name": "gre2"}})
    assert found == [Problem("tunnels.gre1.name",
                             "unknown key: the device name is the tunnel's own key")]


# -- device names -----------------------------------------------------------------------

@pytest.mark.parametrize("name, words", [
    ("averyverylongname", "'averyverylongname' is 17 bytes; the kernel allows 1 to 15"),
    ("é" * 8, "is 16 bytes"),
    ("", "is 0 bytes"),
    ("gre%d", "'%'"),
    ("gre/1", "'/'"),
    ("gre0:1", "':'"),
    ("gre 1", "space"),
    ("gre\t1", "space"),
    (".", "'.' or '..'"),
    ("..", "'.' or '..'"),
    (1, "the device name 1 must be text"),
    (None, "the device name None must be text"),
    (True, "must be text"),
    (1.5, "must be text"),
])
def test_device_names_the_kernel_would_refuse_or_rename_are_refused(name, words):
    [problem] = problems({name: GRE})
    assert problem.path.startswith("tunnels") and words in problem.message


@pytest.mark.parametrize("name", ["gre1", "a" * 15, "é" * 7, "br-lan.10", "tun_0", "x"])
def test_device_names_the_kernel_takes_are_accepted(name):
    assert list(parse_config({"tunnels": {name: GRE}}).tunnels) == [name]


@pytest.mark.parametrize("name", ["\0", "gre\x001", "grà"])
def test_device_names_with_a_nul_or_a_byte_the_kernel_takes_for_space_are_refused(name):
    [problem] = problems({name: GRE})
    assert problem.path == f"tunnels.{name}"


@pytest.mark.parametrize("key", ["1", "null", "true", "1.5"])
def test_a_device_name_that_is_not_text_is_reported_at_its_own_line(tmp_path, key):
    found = file_problems(tmp_path, f"tunnels:\n  {key}:\n    mode: gre\n    local: 10.0.0.1\n"
                                    f"    remote: 10.0.0.2\n")
    assert [(p.line, "must be text" in p.message) for p in found] == [(2, True)]


# -- routes -----------------------------------------------------------------------------

def test_overlapping_routes_across_tunnels_are_reported_at_the_route():
    found = problems({"a": GRE | {"routes": ["10.1.0.0/16"]},
                      "b": GRE | {"remote": "10.0.0.3", "routes": ["10.9.0.0/16", "10.1.2.0/24"]}})
    assert found == [Problem("tunnels.b.routes[1]", "10.1.2.0/24 overlaps 10.1.0.0/16 of tunnel a")]


def test_the_same_route_in_two_tunnels_at_one_metric_overlaps():
    found = problems({"a": GRE | {"routes": ["fd00:1::/48"]},
                      "b": GRE | {"remote": "10.0.0.3", "routes": [
                          {"to": "fd00:1::/48", "metric": 1024}]}})
    assert found == [Problem("tunnels.b.routes[0]", "fd00:1::/48 metric 1024 overlaps "
                             "fd00:1::/48 of tunnel a (give one a higher metric: a backup route)")]


def test_a_backup_tunnel_carries_the_same_prefix_at_another_metric():
    backup = {"to": "10.1.0.0/16", "metric": 200}
    config = parse_config({"tunnels": {
        "a": GRE | {"routes": ["10.1.0.0/16"]},
        "b": GRE | {"remote": "10.0.0.3", "routes": [backup]},
        "c": GRE | {"remote": "10.0.0.4", "routes": [backup | {"metric": 300}]}}})
    assert [str(route) for route in config.tunnels["b"].routes] == ["10.1.0.0/16 metric 200"]
    # ... but two backups at one metric would be one route.
    found = problems({"a": GRE | {"routes": ["10.1.0.0/16"]},
                      "b": GRE | {"remote": "10.0.0.3", "routes": [backup]},
                      "c": GRE | {"remote": "10.0.0.4", "routes": [backup]}})
    assert [(p.path, "overlaps 10.1.0.0/16 metric 200 of tunnel b" in p.message)
            for p in found] == [("tunnels.c.routes[0]", True)]


def test_routes_in_other_tables_do_not_overlap_the_main_tables():
    config = parse_config({"tunnels": {
        "a": GRE | {"routes": ["10.1.0.0/16"]},
        "b": GRE | {"remote": "10.0.0.3", "routes": [{"to": "10.1.0.0/16", "table": 100}]}}})
    assert str(config.tunnels["b"].routes[0]) == "10.1.0.0/16 table 100"


@pytest.mark.parametrize("route, path, words", [
    ({"to": "10.2.0.0/16", "via": "192.168.9.9"}, "routes[0].via", "on none of the tunnel's own"),
    ({"to": "10.2.0.0/16", "via": "fd00::1"}, "routes[0].via", "IPv6 but 10.2.0.0/16 is IPv4"),
    ({"to": "10.2.0.0/16", "metric": -1}, "routes[0].metric", "greater than or equal to 0"),
    ({"to": "10.2.0.0/16", "table": 0}, "routes[0].table", "greater than or equal to 1"),
    ({"to": "10.2.0.1/16"}, "routes[0].to", "not a valid"),
    ({"via": "192.168.1.2"}, "routes[0].to", "missing"),
    ({"to": "10.2.0.0/16", "gateway": "192.168.1.2"}, "routes[0].gateway", "unknown key"),
    (5, "routes[0]", "a prefix (10.2.0.0/16) or a mapping"),
])
def test_a_route_in_netplan_form_is_checked_key_by_key(route, path, words):
    [problem] = problems({"t": GRE | {"addresses": ["192.168.1.1/24"], "routes": [route]}})
    assert problem.path == f"tunnels.t.{path}" and words in problem.message, problem


def test_routes_of_one_tunnel_may_nest():
    routes = ["10.1.0.0/16", "10.1.2.0/24", "10.1.2.0/24"]
    assert len(parse_config({"tunnels": {"a": GRE | {"routes": routes}}}).tunnels["a"].routes) == 3


@pytest.mark.parametrize("tunnels, path, covered", [
    ({"t": GRE | {"routes": ["10.0.0.0/8"]}}, "tunnels.t.routes[0]",
     "10.0.0.2, a remote of tunnel t"),
    ({"t": GRE | {"routes": ["10.0.0.2/32"]}}, "tunnels.t.routes[0]",
     "10.0.0.2, a remote of tunnel t"),
    ({"t": GRE | {"routes": ["0.0.0.0/0"]}}, "tunnels.t.routes[0]", "a remote of tunnel t"),
    ({"a": GRE, "b": GRE | {"remote": "192.0.2.9", "routes": ["10.0.0.0/30"]}},
     "tunnels.b.routes[0]", "10.0.0.2, a remote of tunnel a"),
    ({"v": VXLAN | {"remotes": ["192.0.2.2"], "routes": ["10.0.0.0/24"],
                    "fdb": [{"mac": "02:00:00:00:00:01", "remote": "10.0.0.7"}]}},
     "tunnels.v.routes[0]", "10.0.0.7, an fdb remote of tunnel v"),
    ({"v": VXLAN | {"local": "2001:db8::1", "remotes": ["2001:db8:1::2"],
                    "routes": ["2001:db8:1::/48"]}},
     "tunnels.v.routes[0]", "2001:db8:1::2, a remote of tunnel v"),
])
def test_a_route_that_covers_a_remote_is_refused_at_the_route(tunnels, path, covered):
    [problem] = problems(tunnels)
    assert problem.path == path and covered in problem.message
    assert "would carry its own datagrams" in problem.message


def test_ten_thousand_routes_validate():
    # The checks sort; a pairwise comparison would take 10^8 steps here.
    routes = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(10_000)]
    config = parse_config({"tunnels": {
        "a": GRE | {"remote": "192.0.2.1", "routes": routes[::2]},
        "b": GRE | {"remote": "192.0.2.2", "routes": routes[1::2]}}})
    assert len(config.tunnels["a"].routes) + len(config.tunnels["b"].routes) == 10_000


def test_ten_thousand_overlapping_routes_are_each_reported():
    routes = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(10_000)]
    found = problems({"a": GRE | {"remote": "192.0.2.1", "routes": ["10.0.0.0/8"]},
                      "b": GRE | {"remote": "192.0.2.2", "routes": routes}})
    assert {p.path for p in found} == {f"tunnels.b.routes[{i}]" for i in range(10_000)}


def _network(address: str, length: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"{address}/{length}", strict=False)


NETWORKS = st.one_of(
    st.builds(_network, st.integers(0, 255).map("10.0.{}.0".format), st.integers(16, 24)),
    # Now and then a route over the remotes.
    st.builds(_network, st.integers(0, 255).map("192.0.2.{}".format), st.integers(24, 32)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(NETWORKS, max_size=5), min_size=1, max_size=3))
def test_route_checks_agree_with_comparing_every_pair(route_lists):
    remotes = [ipaddress.ip_address(f"192.0.2.{i + 1}") for i in range(len(route_lists))]
    tunnels = {f"t{i}": GRE | {"remote": str(remotes[i]), "routes": [str(r) for r in routes]}
               for i, routes in enumerate(route_lists)}
    routes = [(i, j, route) for i, routes in enumerate(route_lists)
              for j, route in enumerate(routes)]
    overlaps = [(a, b) for a in routes for b in routes if a[0] < b[0] and a[2].overlaps(b[2])]
    covers = [(route, remote) for route in routes for remote in remotes if remote in route[2]]
    try:
        parse_config({"tunnels": tunnels})
    except ConfigError as error:
        reported = {p.path for p in error.problems}
    else:
        reported = set()
    path = "tunnels.t{}.routes[{}]".format
    assert bool(reported) == bool(overlaps or covers)
    for a, b in overlaps:
        assert path(a[0], a[1]) in reported or path(b[0], b[1]) in reported
    for _, remote in covers:
        assert any(path(i, j) in reported for i, j, route in routes if remote in route)
    wrong = {path(*route[:2]) for route in routes
             if any(route in pair for pair in overlaps) or any(c[0][2] == route[2] for c in covers)}
    assert reported <= wrong


# -- IPv6 needs 1280 --------------------------------------------------------------------

@pytest.mark.parametrize("tunnel", [
    GRE | {"mtu": 1000},
    GRE | {"underlay-mtu": 1300},                     # auto: 1276
    VXLAN | {"underlay-mtu": 1320},                   # auto: 1270
    {"mode": "sit", "local": "10.0.0.1", "remote": "10.0.0.2", "mtu": 1279},
])
def test_an_ipv6_address_on_a_tunnel_below_1280_is_refused_at_the_address(tunnel):
    found = problems({"t": tunnel | {"addresses": ["fd00:1::1/64", "fd00:2::1/64"]}
                      if tunnel["mode"] == "sit" else
                      tunnel | {"addresses": ["10.1.0.1/30", "fd00:1::1/64"]}})
    paths = [p.path for p in found]
    assert paths == (["tunnels.t.addresses[0]", "tunnels.t.addresses[1]"]
                     if tunnel["mode"] == "sit" else ["tunnels.t.addresses[1]"])
    assert all("needs an MTU of at least 1280" in p.message for p in found)


def test_an_ipv6_address_on_a_tunnel_of_1280_is_accepted():
    parse_config({"tunnels": {"t": GRE | {"mtu": 1280, "addresses": ["fd00:1::1/64"]}}})


# -- tunnels on one underlay socket -----------------------------------------------------

@pytest.mark.parametrize("tunnels, path, words", [
    ({"a": GRE, "b": GRE}, "tunnels.b.key", "cannot be told apart from tunnel a"),
    ({"a": GRE | {"key": 7}, "b": GRE | {"key": 7}}, "tunnels.b.key", "tunnel a"),
    ({"a": GRE | {"key": 7}, "b": GRE | {"mode": "gretap", "key": 7}}, "tunnels.b.key",
     "cannot be told apart from tunnel a"),
    ({"a": GRE, "b": GRE | {"mode": "gretap"}}, "tunnels.b.key", "tunnel a"),
    ({"a": VXLAN, "b": VXLAN | {"remotes": ["10.0.0.9"]}}, "tunnels.b.id",
     "cannot be told apart from tunnel a"),
    ({"a": IPIP, "b": IPIP}, "tunnels.b.remote", "cannot be told apart from tunnel a"),
    ({"a": IPIP | {"mode": "sit"}, "b": IPIP | {"mode": "sit"}}, "tunnels.b.remote", "tunnel a"),
])
def test_tunnels_one_socket_cannot_tell_apart_are_refused(tunnels, path, words):
    [problem] = problems(tunnels)
    assert problem.path == path and words in problem.message


@pytest.mark.parametrize("tunnels", [
    {"a": GRE | {"key": 1}, "b": GRE | {"key": 2}},
    {"a": GRE, "b": GRE | {"key": 2}},
    {"a": GRE, "b": GRE | {"remote": "10.0.0.3"}},
    {"a": GRE | {"key": 1}, "b": GRE | {"mode": "gretap", "key": 2}},
    {"a": GRE, "b": GRE | {"local": "10.0.0.9"}},
    {"a": VXLAN, "b": VXLAN | {"id": 43}},
    {"a": VXLAN, "b": VXLAN | {"port": 4790}},
    {"a": VXLAN, "b": VXLAN | {"local": "10.0.0.9"}},
    {"a": IPIP, "b": IPIP | {"mode": "sit"}},          # protocols 4 and 41: two sockets
    {"a": IPIP, "b": GRE},
])
def test_tunnels_that_differ_in_their_end_or_key_share_an_underlay(tunnels):
    assert set(parse_config({"tunnels": tunnels}).tunnels) == set(tunnels)


def test_vxlan_tunnels_on_one_socket_agree_on_pmtu_discovery():
    found = problems({"a": VXLAN, "b": VXLAN | {"id": 43, "pmtu-discovery": False}})
    assert found == [Problem("tunnels.b.pmtu-discovery", "must equal tunnel a's: both use "
                                                         "10.0.0.1 port 4789")]
    parse_config({"tunnels": {"a": VXLAN, "b": VXLAN | {"id": 43, "port": 4790,
                                                        "pmtu-discovery": False}}})


# -- files: unreadable, not YAML, hostile -----------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("tunnels: [", "not valid YAML"), ("- 1\n- 2\n", "mapping"), ("tunnels: {}\n", "at least one"),
    ("", "the file is empty"), ("# only this\n", "the file is empty"), ("---\n...\n", "empty"),
    ("tunnels\n", "must be a mapping"),
])
def test_file_level_problems(tmp_path, text, words):
    found = file_problems(tmp_path, text)
    assert any(words in p.message for p in found), found


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_a_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_bytes_that_are_not_utf8_are_a_problem_at_their_line(tmp_path):
    found = file_problems(tmp_path, "# Zürich\ntunnels:\n  # café\n".encode("latin-1"))
    assert found == [Problem("", "not UTF-8 text: byte 0xfc at offset 3", 1)]


def test_a_file_just_over_the_size_limit_is_refused_unread(tmp_path):
    comment = b"# " + b"x" * 1021 + b"\n"
    found = file_problems(tmp_path, comment * (MAX_FILE_BYTES // len(comment)) + b"#\n")
    assert [p.message for p in found] == ["larger than 16 MiB: not a configuration"]


def test_a_file_at_the_size_limit_is_read(tmp_path, monkeypatch):
    # A smaller limit: PyYAML would take seconds to scan 16 MiB of comment.
    monkeypatch.setattr(config_module, "MAX_FILE_BYTES", 4096)
    path = tmp_path / "big.yaml"
    body = b"tunnels:\n  t: {mode: gre, local: 10.0.0.1, remote: 10.0.0.2}\n"
    path.write_bytes(body + b"#" * (4096 - len(body) - 1) + b"\n")
    assert list(load_config(path).tunnels) == ["t"]
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(ConfigError, match="not a configuration"):
        load_config(path)


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    found = file_problems(tmp_path, "\n".join(lines) + "\ntunnels: *i\n")
    assert [p.message for p in found] == ["aliases expand this to more than 200000 values"]


def test_an_alias_used_many_times_within_the_bound_is_read(tmp_path):
    config = load_config_text("tunnels:\n  a: &a {mode: gre, local: 10.0.0.1, remote: 10.0.0.2,"
                              " key: 1}\n  b: {<<: *a, key: 2}\n  c: {<<: *a, key: 3}\n")
    assert [t.key for t in config.tunnels.values()] == [1, 2, 3]


def test_an_alias_that_holds_itself_is_refused(tmp_path):
    found = file_problems(tmp_path, "tunnels: &loop\n  gre1: *loop\n")
    assert [(p.path, p.message) for p in found] == [
        ("tunnels.gre1", "an alias refers to a value that holds it")]


@pytest.mark.parametrize("nested", [
    "[" * 10_000 + "]" * 10_000,
    "{a: " * 10_000 + "1" + "}" * 10_000,
    "\n" + "- " * 10_000 + "1",
])
def test_nesting_ten_thousand_levels_deep_is_a_problem_not_a_crash(tmp_path, nested):
    found = file_problems(tmp_path, "tunnels: " + nested + "\n")
    assert [p.message for p in found] == ["nested too deeply to be a configuration"]


def test_a_five_thousand_digit_number_is_a_problem_not_a_crash(tmp_path):
    found = file_problems(tmp_path, "tunnels:\n  t:\n    mode: gre\n    local: 10.0.0.1\n"
                                    "    remote: 10.0.0.2\n    key: " + "9" * 5000 + "\n")
    assert at(found) == [("tunnels.t.key", 6)] and "a valid integer" in found[0].message


@pytest.mark.parametrize("text, line", [
    ("tunnels:\n\tt:\n\t\tmode: gre\n", 2),
    ("tunnels:\n  t:\n    mode: gre\n    local: '10.0.0.1\n", 5),
    ("tunnels:\n  t:\n    mode: !!python/object/apply:os.system [true]\n", 3),
    ("tunnels: a\n---\ntunnels: b\n", 2),
    ("tunnels:\n  [a, b]: {mode: gre}\n", 2),
])
def test_yaml_that_does_not_parse_is_a_problem_at_its_line(tmp_path, text, line):
    [problem] = file_problems(tmp_path, text)
    assert problem.message.startswith("not valid YAML") and problem.line == line


@pytest.mark.parametrize("character", ["\0", "\x1b", "\x7f", "\x0c", "\ufffe"])
def test_a_control_character_is_a_problem_not_a_crash(tmp_path, character):
    found = file_problems(tmp_path, f"tunnels:\n  t:\n    mode: gre{character}\n")
    assert [p.line for p in found] == [3]


# -- the folder of broken files: `tunnelrouter check` on each ---------------------------

@functools.cache
def _generated() -> dict[str, tuple[bytes, list[str]]]:
    """Broken files better made than committed: binary, huge or deep."""
    return {
        "empty.yaml": (b"", ["the file is empty"]),
        "binary-garbage.yaml": (bytes(range(255, -1, -1)) * 4,
                                ["line 1: not UTF-8 text: byte 0xff"]),
        "elf-header.yaml": (b"\x7fELF\x02\x01\x01" + bytes(57), []),
        "latin-1.yaml": ("# Zürich office\ntunnels:\n  zürich: {mode: gre}\n".encode("latin-1"),
                         ["line 1: not UTF-8 text: byte 0xfc at offset 3"]),
        "utf-16.yaml": ("tunnels:\n".encode("utf-16"), ["line 1: not UTF-8 text: byte 0xff"]),
        "nul-byte.yaml": (b"tunnels:\n  t:\n    mode: gre\x00\n", ["line 3: "]),
        # Pasted from a terminal, colours and all.
        "escape-sequence.yaml": (b"tunnels:\n  t:\n    mode: \x1b[1mgre\x1b[0m\n", ["line 3: "]),
        "just-over-16-MiB.yaml": (b"#" * MAX_FILE_BYTES + b"\n",
                                  ["larger than 16 MiB: not a configuration"]),
        "nested-10000-deep.yaml": (b"tunnels: " + b"[" * 10_000 + b"]" * 10_000 + b"\n",
                                   ["nested too deeply to be a configuration"]),
        "nested-block-sequences-10000-deep.yaml": (b"tunnels:\n" + b"- " * 10_000 + b"1\n",
                                                   ["nested too deeply to be a configuration"]),
        "alias-bomb-wide.yaml": (b"a: &a [" + b"x, " * 1000 + b"]\nb: &b [" + b"*a, " * 1000
                                 + b"]\ntunnels: {t: *b}\n", ["aliases expand this"]),
    }


BROKEN_CASES = [pytest.param(path, id=path.name) for path in sorted(BROKEN.glob("*.yaml"))] + [
    pytest.param(name, id=name) for name in _generated()]


def test_the_folder_holds_at_least_fifty_broken_files_each_saying_what_is_wrong():
    files = sorted(BROKEN.glob("*.yaml"))
    assert len(files) >= 50
    for path in files:
        first, second = path.read_text().split("\n")[:2]
        assert first.startswith("# ") and len(first) > 10, path.name
        assert second.startswith("# expect: "), path.name


def expectations(path: Path) -> list[str]:
    return [line.removeprefix("# expect: ") for line in path.read_text().split("\n")
            if line.startswith("# expect: ")]


def broken_file(case, tmp_path: Path) -> tuple[Path, list[str]]:
    if isinstance(case, Path):
        return case, expectations(case)
    content, expected = _generated()[case]
    path = tmp_path / case
    path.write_bytes(content)
    return path, expected


def problem_line_pattern(path: Path) -> re.Pattern:
    """``FILE[:LINE]: [PATH: ]MESSAGE``."""
    return re.compile(rf"{re.escape(str(path))}(:\d+)?: \S.*")


def assert_reported(path: Path, stderr: str, expected: list[str]) -> None:
    lines = stderr.splitlines()
    assert lines, "nothing on stderr"
    pattern = problem_line_pattern(path)
    for line in lines:
        assert pattern.fullmatch(line), line
    for expectation in expected:
        numbered = re.match(r"line (\d+): (.*)", expectation, re.S)
        if numbered:
            wanted = f"{path}:{numbered[1]}: {numbered[2]}"
            assert any(line.startswith(wanted) for line in lines), (wanted, lines)
        else:
            assert any(expectation in line for line in lines), (expectation, lines)


@pytest.mark.parametrize("case", BROKEN_CASES)
def test_check_reports_each_broken_file_and_exits_2(case, tmp_path, capsys):
    path, expected = broken_file(case, tmp_path)
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in out + err
    assert out == ""
    assert_reported(path, err, expected)


@pytest.mark.parametrize("name", ["five-mistakes.yaml", "alias-bomb.yaml",
                                  "tabs-for-indentation.yaml"])
def test_check_reports_broken_files_from_the_outside_too(name):
    path = BROKEN / name
    result = subprocess.run([TUNNELROUTER, "check", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert_reported(path, result.stderr, expectations(path))


# -- allowed-ips and rate-limit ---------------------------------------------------------

def test_allowed_ips_and_rate_limit_are_off_unless_given():
    tunnel = parse_config({"tunnels": {"gre1": GRE}}).tunnels["gre1"]
    assert tunnel.allowed_ips is None and tunnel.rate_limit is None


def test_allowed_ips_are_networks_and_a_bare_address_is_one_host():
    tunnel = parse_config({"tunnels": {"vx1": VXLAN | {"allowed-ips": [
        "10.2.0.0/16", "10.9.9.9", "fd02::/48"]}}}).tunnels["vx1"]
    assert [str(network) for network in tunnel.allowed_ips] == [
        "10.2.0.0/16", "10.9.9.9/32", "fd02::/48"]


@pytest.mark.parametrize("value, message", [
    ("10.2.0.0/16", "Input should be a valid tuple"),
    ([167903232], "written as text"),
    (["10.2.0.0/33"], "not a prefix"),
    (["fe80::/10%eth0"], "an IPv6 zone"),
    (["10.2.0.1/16"], "host bits set: the network is 10.2.0.0/16"),
])
def test_a_wrong_allowed_ips_value_says_why(value, message):
    [problem] = problems({"gre1": GRE | {"allowed-ips": value}})
    assert problem.path.startswith("tunnels.gre1.allowed-ips") and message in problem.message


def test_a_rate_limit_takes_rates_per_second_and_a_burst_duration():
    limit = parse_config({"tunnels": {"gre1": GRE | {"rate-limit": {
        "packets": 20000, "bytes": 12_500_000, "burst": "50ms"}}}}).tunnels["gre1"].rate_limit
    assert (limit.packets, limit.bytes_, limit.burst) == (20000, 12_500_000, 0.05)
    assert parse_config({"tunnels": {"gre1": GRE | {"rate-limit": {"packets": 10}}}}).tunnels[
        "gre1"].rate_limit.burst == 0.1


@pytest.mark.parametrize("value, path, message", [
    (20000, "tunnels.t.rate-limit", "a mapping, like {packets: 20000"),
    ({"packets": "20000"}, "tunnels.t.rate-limit.packets", "valid integer"),
    ({"packets": 0}, "tunnels.t.rate-limit.packets", "greater than or equal to 1"),
    ({"bytes": True}, "tunnels.t.rate-limit.bytes", "valid integer"),
    ({"packets": 10, "burst": "2m"}, "tunnels.t.rate-limit.burst", "at most 60s"),
    ({"packets": 10, "per-peer": True}, "tunnels.t.rate-limit.per-peer", "unknown key"),
    # A gretap tunnel's largest packet is its MTU and an Ethernet header: 1462 + 14.
    ({"bytes": 14_750, "burst": "100ms"}, "tunnels.t.rate-limit.burst", "no 1476-byte packet"),
])
def test_a_wrong_rate_limit_says_which_key_and_why(value, path, message):
    [problem] = problems({"t": GRE | {"mode": "gretap", "rate-limit": value}})
    assert problem.path == path and message in problem.message


# -- metrics: ---------------------------------------------------------------------------

def test_metrics_are_off_unless_given_and_take_an_address_and_port():
    assert parse_config({"tunnels": {"t": GRE}}).metrics is None
    config = parse_config({"tunnels": {"t": GRE}, "metrics": "127.0.0.1:9477"})
    assert (str(config.metrics.address), config.metrics.port) == ("127.0.0.1", 9477)
    assert str(parse_config({"tunnels": {"t": GRE}, "metrics": "[::1]:9477"}).metrics) == \
        "[::1]:9477"


@pytest.mark.parametrize("value, words", [
    ("localhost:9477", "not an IP address (a name is not looked up)"),
    ("127.0.0.1", "not an address and port"),
    ("::1:9477", "not an address and port"),
    ("127.0.0.1:0", "port 0 is not 1 to 65535"),
    ("[127.0.0.1]:9477", "an IPv6 address goes in brackets"),
    (9477, "written as text"),
    (True, "written as text"),
    ("224.0.0.1:9477", "multicast"),
])
def test_a_wrong_metrics_value_is_named_with_its_line(value, words):
    text = yaml.safe_dump({"tunnels": {"t": GRE}}) + yaml.safe_dump({"metrics": value})
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    (problem,) = caught.value.problems
    assert problem.path == "metrics" and words in problem.message, problem
    assert text.splitlines()[problem.line - 1].startswith("metrics:")


def test_a_tcp_forward_may_not_listen_where_the_metrics_do():
    forward = {"listen": "0.0.0.0:9477", "to": "10.2.1.1:80"}
    with pytest.raises(ConfigError) as caught:
        parse_config({"tunnels": {"t": GRE}, "metrics": "127.0.0.1:9477",
                      "forwards": {"web": forward}})
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("forwards.web.listen", "0.0.0.0:9477 (tcp) is taken by the metrics: one address and "
                                "port serve one listener")]
    # UDP, or another address, is another listener.
    parse_config({"tunnels": {"t": GRE}, "metrics": "127.0.0.1:9477",
                  "forwards": {"dns": forward | {"protocol": "udp"},
                               "web": forward | {"listen": "10.0.0.1:9477"}}})

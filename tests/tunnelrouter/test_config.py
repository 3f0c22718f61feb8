"""Configuration: every problem named by its key path, before anything is touched."""

from pathlib import Path

import pytest

from encap.mtu import Mode
from tunnelrouter.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "site-a.yaml"
GRE = {"mode": "gre", "local": "10.0.0.1", "remote": "10.0.0.2"}
VXLAN = {"mode": "vxlan", "local": "10.0.0.1", "remotes": ["10.0.0.2", "10.0.0.3"], "id": 42}


def problems(tunnels: dict) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"tunnels": tunnels})
    return caught.value.problems


def test_the_example_configuration_is_valid():
    config = load_config(EXAMPLE)
    assert list(config.tunnels) == ["gre1", "vx1", "ipip1", "six1"]
    assert config.tunnels["gre1"].key == 42 and config.tunnels["vx1"].id == 4242


def test_defaults_follow_the_kernel():
    tunnel = parse_config({"tunnels": {"gre1": GRE}}).tunnels["gre1"]
    assert (tunnel.ttl, tunnel.dscp, tunnel.ecn, tunnel.mtu, tunnel.mss_clamp) == \
        (64, 0, "normal", "auto", "auto")
    assert (tunnel.pmtu_discovery, tunnel.pmtu_timeout) == (True, 600)
    assert tunnel.device_mtu == 1476 and tunnel.mss_limits() == (1436, 1416)
    assert tunnel.name == "gre1" and tunnel.mode == Mode.GRE


def test_fixed_mtu_and_mss_are_used_as_given():
    tunnel = parse_config({"tunnels": {"t": GRE | {"mtu": 1400, "mss-clamp": 1300}}}).tunnels["t"]
    assert tunnel.device_mtu == 1400 and tunnel.mss_limits() == (1300, 1300)
    off = parse_config({"tunnels": {"t": GRE | {"mss-clamp": "off"}}}).tunnels["t"]
    assert off.mss_limits() is None


def test_vxlan_peers_merge_remote_and_remotes():
    tunnel = parse_config({"tunnels": {"v": VXLAN | {"remote": "10.0.0.2"}}}).tunnels["v"]
    assert [str(p) for p in tunnel.peers] == ["10.0.0.2", "10.0.0.3"]


@pytest.mark.parametrize("tunnel, path, words", [
    (GRE | {"colour": "red"}, "tunnels.t.colour", "unknown key"),
    (GRE | {"remote": "10.0.0.300"}, "tunnels.t.remote", "10.0.0.300"),
    (GRE | {"addresses": ["192.168.1.1/33"]}, "tunnels.t.addresses[0]", "not a valid"),
    (GRE | {"routes": ["10.1.0.0/16", "bad"]}, "tunnels.t.routes[1]", "not a valid"),
    (GRE | {"ttl": 0}, "tunnels.t.ttl", "'inherit'"),
    (GRE | {"ttl": "always"}, "tunnels.t.ttl", "'inherit'"),
    (GRE | {"key": -1}, "tunnels.t.key", "greater than or equal to 0"),
    (GRE | {"mtu": 40}, "tunnels.t.mtu", "'auto'"),
    (GRE | {"mode": "geneve"}, "tunnels.t.mode", "'gre'"),
    (VXLAN | {"id": 1 << 24}, "tunnels.t.id", "16777215"),
    (VXLAN | {"key": 1}, "tunnels.t.key", "GRE option"),
    (GRE | {"id": 5}, "tunnels.t.id", "VXLAN option"),
    ({"mode": "vxlan", "local": "10.0.0.1", "remotes": ["10.0.0.2"]}, "tunnels.t.id", "VNI"),
    ({"mode": "gre", "local": "10.0.0.1"}, "tunnels.t.remote", "missing"),
    ({"mode": "ipip", "remote": "10.0.0.1"}, "tunnels.t.local", "missing"),
    (GRE | {"remote": "2001:db8::1"}, "tunnels.t.remote", "IPv6"),
    ({"mode": "sit", "local": "10.0.0.1", "remote": "10.0.0.2", "addresses": ["10.9.0.1/30"]},
     "tunnels.t.addresses[0]", "does not carry"),
    ({"mode": "ipip", "local": "10.0.0.1", "remote": "10.0.0.2", "routes": ["fd00::/8"]},
     "tunnels.t.routes[0]", "does not carry"),
    (GRE | {"mtu": 1490}, "tunnels.t.mtu", "1476"),
    (GRE | {"underlay-mtu": 80}, "tunnels.t.underlay-mtu", "less than 68"),
    (VXLAN | {"fdb": [{"mac": "02:00:00:00:00", "remote": "10.0.0.2"}]}, "tunnels.t.fdb[0].mac",
     "MAC"),
    (GRE | {"tos": 0}, "tunnels.t.tos", "'dscp'"),
    (GRE | {"dscp": 64}, "tunnels.t.dscp", "'inherit'"),
    (GRE | {"ecn": "full"}, "tunnels.t.ecn", "'compatibility'"),
    (GRE | {"pmtu-timeout": 1}, "tunnels.t.pmtu-timeout", "greater than or equal to 5"),
    (GRE | {"icmp-rate-limit": -1}, "tunnels.t.icmp-rate-limit", "greater than or equal to 0"),
    (GRE | {"pmtu-discovery": "maybe"}, "tunnels.t.pmtu-discovery", "boolean"),
])
def test_problems_name_the_key_and_the_problem(tunnel, path, words):
    found = problems({"t": tunnel})
    assert any(p == path and words in message for p, message in found), found


def test_device_name_longer_than_the_kernel_allows():
    [(path, message)] = problems({"averyverylongname": GRE})
    assert path == "tunnels" and "'averyverylongname'" in message and "15" in message


def test_overlapping_routes_across_tunnels():
    found = problems({"a": GRE | {"routes": ["10.1.0.0/16"]},
                      "b": GRE | {"remote": "10.0.0.3", "routes": ["10.1.2.0/24"]}})
    assert found == [("tunnels.b.routes", "10.1.2.0/24 overlaps 10.1.0.0/16 of tunnel a")]


def test_two_tunnels_between_the_same_ends_need_different_keys():
    assert problems({"a": GRE, "b": GRE})[0][0] == "tunnels.b.remote"
    parse_config({"tunnels": {"a": GRE | {"key": 1}, "b": GRE | {"key": 2}}})


def test_one_vni_per_port():
    assert problems({"a": VXLAN, "b": VXLAN})[0][0] == "tunnels.b.id"


def test_vxlan_tunnels_on_one_socket_agree_on_pmtu_discovery():
    found = problems({"a": VXLAN, "b": VXLAN | {"id": 43, "pmtu-discovery": False}})
    assert found == [("tunnels.b.pmtu-discovery", "must equal tunnel a's: both use 10.0.0.1 "
                                                  "port 4789")]


def test_the_mss_follows_the_mtu_the_tunnel_carries():
    tunnel = parse_config({"tunnels": {"gre1": GRE}}).tunnels["gre1"]
    assert tunnel.mss_limits(1376) == (1336, 1316)
    # Below 1280, IPv6 still goes as 1280-byte packets, in outer fragments (RFC 4213 §3.2).
    assert tunnel.mss_limits(1256) == (1216, 1220)


def test_every_problem_is_reported_at_once():
    assert len(problems({"t": GRE | {"colour": 1, "ttl": 999}})) == 2


@pytest.mark.parametrize("text, words", [
    ("tunnels: [", "not valid YAML"), ("- 1\n- 2\n", "mapping"), ("tunnels: {}\n", "at least one"),
])
def test_file_level_problems(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert words in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")

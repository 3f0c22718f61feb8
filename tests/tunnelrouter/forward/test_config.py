"""The forwards: section, checked in the same pass as the tunnels: each problem at its key
path and line, every one at once."""

import ipaddress

import pytest

from tunnelrouter.config import ConfigError, parse_config
from tunnelrouter.yaml_reader import read_yaml
from tunnelrouter.forward.config import Endpoint, Rate

WEB = {"listen": "0.0.0.0:8080", "to": "10.2.1.10:80"}
DNS = {"listen": "0.0.0.0:5353", "protocol": "udp", "to": "10.2.1.10:53"}
GRE = {"mode": "gre", "local": "10.0.0.1", "remote": "10.0.0.2"}


def forwards(**bodies) -> dict:
    return parse_config({"forwards": bodies}).forwards


def problems(data: dict) -> list:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def test_the_issues_example_reads_as_written():
    web = forwards(web={"listen": "0.0.0.0:8080", "protocol": "tcp", "to": "10.2.1.10:80",
                        "allow": ["192.0.2.0/24"], "connect-timeout": "5s",
                        "idle-timeout": "10m", "max-lifetime": 0, "max-connections": 1000,
                        "rate": "50/s", "proxy-protocol": "v2"})["web"]
    assert web.listen == Endpoint(ipaddress.ip_address("0.0.0.0"), 8080)
    assert str(web.to) == "10.2.1.10:80" and web.protocol == "tcp"
    assert web.allow == (ipaddress.ip_network("192.0.2.0/24"),) and web.deny == ()
    assert (web.connect_timeout, web.idle, web.max_lifetime) == (5.0, 600.0, 0.0)
    assert web.max_connections == 1000 and web.rate == Rate(50, 1.0)
    assert web.proxy_protocol == "v2" and web.name == "web"


def test_defaults_and_the_idle_timeout_of_each_protocol():
    config = forwards(web=WEB, dns=DNS)
    web, dns = config["web"], config["dns"]
    assert (web.protocol, web.connect_timeout, web.idle, web.max_lifetime) == ("tcp", 5, 600, 0)
    assert web.max_connections == 1000 and web.rate is None and web.proxy_protocol is None
    assert dns.idle == 60.0


def test_ipv6_ends_are_written_in_brackets():
    web = forwards(web={"listen": "[::]:8080", "to": "[fd02::10]:80"})["web"]
    assert web.listen.family == 6 and str(web.listen) == "[::]:8080"
    assert str(web.to) == "[fd02::10]:80"


@pytest.mark.parametrize("value, seconds", [
    ("500ms", 0.5), ("5s", 5.0), ("10m", 600.0), ("1h", 3600.0), ("2d", 172800.0), (0, 0.0)])
def test_durations_take_a_unit(value, seconds):
    assert forwards(web=WEB | {"max-lifetime": value})["web"].max_lifetime == seconds


@pytest.mark.parametrize("value, rate", [("50/s", Rate(50, 1.0)), ("600/m", Rate(600, 60.0)),
                                         ("10/h", Rate(10, 3600.0))])
def test_rates_are_a_count_per_period(value, rate):
    parsed = forwards(web=WEB | {"rate": value})["web"].rate
    assert parsed == rate and str(parsed) == value


def test_a_router_may_have_only_forwards_or_both():
    assert parse_config({"forwards": {"web": WEB}}).tunnels == {}
    both = parse_config({"tunnels": {"gre1": GRE}, "forwards": {"web": WEB}})
    assert list(both.tunnels) == ["gre1"] and list(both.forwards) == ["web"]
    assert parse_config({"tunnels": {"gre1": GRE}}).forwards == {}


@pytest.mark.parametrize("body, path, words", [
    (WEB | {"listen": "0.0.0.0"}, "listen", "not an address and port"),
    (WEB | {"listen": "web.example:80"}, "listen", "not an IP address (a name is not looked up)"),
    (WEB | {"listen": "::1:80"}, "listen", "not an address and port"),
    (WEB | {"listen": "[10.0.0.1]:80"}, "listen", "an IPv6 address goes in brackets"),
    (WEB | {"listen": "[fe80::1%eth0]:80"}, "listen", "zone"),
    (WEB | {"listen": "0.0.0.0:0"}, "listen", "port 0 is not 1 to 65535"),
    (WEB | {"listen": "0.0.0.0:65536"}, "listen", "port 65536"),
    (WEB | {"listen": 8080}, "listen", "written as text"),
    (WEB | {"listen": "224.0.0.1:80"}, "listen", "multicast"),
    (WEB | {"to": "0.0.0.0:80"}, "to", "no address to connect to"),
    (WEB | {"to": "[::]:80"}, "to", "no address to connect to"),
    ({"listen": "0.0.0.0:80"}, "to", "missing"),
    (WEB | {"protocol": "sctp"}, "protocol", "'tcp' or 'udp'"),
    (WEB | {"allow": ["10.0.0.1/8"]}, "allow[0]", "not a valid"),
    (WEB | {"deny": "10.0.0.0/8"}, "deny", "tuple"),
    (WEB | {"connect-timeout": 5}, "connect-timeout", "a duration with its unit"),
    (WEB | {"connect-timeout": "5 s"}, "connect-timeout", "a whole number and a unit"),
    (WEB | {"connect-timeout": "1.5s"}, "connect-timeout", "a whole number and a unit"),
    (WEB | {"connect-timeout": 0}, "connect-timeout", "more than 0"),
    (WEB | {"idle-timeout": "400d"}, "idle-timeout", "longer than a year"),
    (WEB | {"max-connections": 0}, "max-connections", "greater than or equal to 1"),
    (WEB | {"max-connections": "10"}, "max-connections", "integer"),
    (WEB | {"rate": "50"}, "rate", "a number of 1 or more and a period"),
    (WEB | {"rate": "0/s"}, "rate", "a number of 1 or more"),
    (WEB | {"rate": 50}, "rate", "new connections per source address"),
    (WEB | {"proxy-protocol": "v3"}, "proxy-protocol", "'v1' or 'v2'"),
    (WEB | {"proxy-protocol": True}, "proxy-protocol", "'v1' or 'v2'"),
    (DNS | {"proxy-protocol": "v2"}, "proxy-protocol", "a key of tcp forwards"),
    (DNS | {"connect-timeout": "1s"}, "connect-timeout", "a key of tcp forwards"),
    (DNS | {"idle-timeout": 0}, "idle-timeout", "a udp session ends only when it is idle"),
    (WEB | {"max_connections": 5}, "max_connections", "it is spelt 'max-connections'"),
    (WEB | {"colour": "red"}, "colour", "a forward's keys are allow, connect-timeout"),
    (WEB | {"name": "web"}, "name", "the forward's name is its own key"),
])
def test_each_problem_names_the_key_below_the_forward(body, path, words):
    found = problems({"forwards": {"web": body}})
    assert any(p.path == f"forwards.web.{path}" and words in p.message for p in found), found


@pytest.mark.parametrize("data, path, words", [
    ({"forwards": {}}, "forwards", "at least one"),
    ({"forwards": [WEB]}, "forwards", "a mapping of names to forwards"),
    ({"forwards": {"web": None}}, "forwards.web", "a mapping of the forward's keys"),
    ({"forwards": {"my web": WEB}}, "forwards.my web", "letters, digits"),
    ({"forwards": {5: WEB}}, "forwards[5]", "letters, digits"),
    ({"forwards": {"-x": WEB}}, "forwards.-x", "starting with a letter or digit"),
    ({}, "tunnels", "or a forward, under 'forwards:'"),
])
def test_problems_of_the_section_name_their_key(data, path, words):
    found = problems(data)
    assert any(p.path == path and words in p.message for p in found), found


@pytest.mark.parametrize("first, second", [
    ("0.0.0.0:8080", "10.0.0.1:8080"),
    ("10.0.0.1:8080", "10.0.0.1:8080"),
    ("10.0.0.1:8080", "0.0.0.0:8080"),
    ("[::]:8080", "[fd00::1]:8080"),
])
def test_two_forwards_may_not_listen_on_one_port(first, second):
    found = problems({"forwards": {"a": WEB | {"listen": first}, "b": WEB | {"listen": second}}})
    assert [(p.path, p.message.split(":")[-1].strip()) for p in found] == [
        ("forwards.b.listen", "one address and port serve one listener")]
    assert "taken by forward a" in found[0].message


@pytest.mark.parametrize("first, second", [
    ("0.0.0.0:8080", "[::]:8080"),           # IPv6 listeners are IPv6 only
    ("10.0.0.1:8080", "10.0.0.2:8080"),
    ("0.0.0.0:8080", "0.0.0.0:8081"),
])
def test_forwards_on_different_ends_are_fine(first, second):
    assert len(forwards(a=WEB | {"listen": first}, b=WEB | {"listen": second})) == 2


def test_tcp_and_udp_may_share_a_port():
    assert len(forwards(a=WEB, b=DNS | {"listen": WEB["listen"]})) == 2


def test_a_udp_forward_may_not_take_a_vxlan_tunnels_port():
    vxlan = {"mode": "vxlan", "local": "10.0.0.1", "remotes": ["10.0.0.2"], "id": 1}
    found = problems({"tunnels": {"vx1": vxlan},
                      "forwards": {"dns": DNS | {"listen": "0.0.0.0:4789"}}})
    assert [p.path for p in found] == ["forwards.dns.listen"]
    assert "tunnel vx1's UDP port" in found[0].message


def test_forward_and_tunnel_problems_come_in_one_pass_in_the_files_order():
    text = """tunnels:
  gre1:
    mode: gre
    local: 10.0.0.1
    remote: 10.0.0.2
    ttl: 0
forwards:
  web:
    listen: 0.0.0.0:80
    to: 10.2.1.10
    rate: 5
  dns:
    listen: 0.0.0.0:53
    protocol: udp
    to: 10.2.1.10:53
    idle-timeout: 0
"""
    data, lines, found = read_yaml(text)
    with pytest.raises(ConfigError) as caught:
        parse_config(data, lines, found)
    assert [(p.path, p.line) for p in caught.value.problems] == [
        ("tunnels.gre1.ttl", 6), ("forwards.web.to", 10), ("forwards.web.rate", 11),
        ("forwards.dns.idle-timeout", 16)]

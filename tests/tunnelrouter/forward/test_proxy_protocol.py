"""The PROXY protocol header against the spec's own examples (HAProxy's proxy-protocol.txt)
and a header HAProxy itself wrote."""

from tunnelrouter.forward.proxy_protocol import V2_SIGNATURE, header, v1, v2


def test_v1_tcp4_is_one_line_as_the_spec_writes_it():
    assert v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == \
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"


def test_v1_at_its_longest_is_as_long_as_the_specs_worst_cases():
    worst4 = v1(("255.255.255.255", 65535), ("255.255.255.255", 65535))
    assert worst4 == b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(worst4) == 56
    six = "ffff:f...:ffff".replace("f...", "ffff:ffff:ffff:ffff:ffff:ffff")
    worst6 = v1((six, 65535), (six, 65535))
    assert worst6 == (f"PROXY TCP6 {six} {six} 65535 65535\r\n").encode()
    assert len(worst6) == 104   # within the 107 bytes a receiver must take


def test_v1_writes_ipv6_as_the_spec_does_compressed():
    assert v1(("fd01:1::1", 40000), ("fd01:1::fe", 8080)) == \
        b"PROXY TCP6 fd01:1::1 fd01:1::fe 40000 8080\r\n"


def test_v1_of_two_families_is_unknown():
    assert v1(("10.0.0.1", 1), ("fd00::1", 2)) == b"PROXY UNKNOWN\r\n"


def test_v2_tcp4_is_byte_for_byte_what_haproxy_sends():
    # 172.19.0.1:42578 -> 172.19.0.3:80, as HAProxy 2.x wrote it (send-proxy-v2).
    assert v2(("172.19.0.1", 42578), ("172.19.0.3", 80)) == bytes.fromhex(
        "0d0a0d0a000d0a515549540a" "21" "11" "000c" "ac130001" "ac130003" "a652" "0050")


def test_v2_tcp6_carries_36_bytes_of_addresses():
    header_bytes = v2(("2001:db8::1", 1), ("2001:db8::2", 65535))
    assert header_bytes[:12] == V2_SIGNATURE == b"\r\n\r\n\x00\r\nQUIT\n"
    assert header_bytes[12:16] == b"\x21\x21\x00\x24"   # v2 PROXY, AF_INET6 STREAM, 36
    assert header_bytes[16:32] == bytes.fromhex("20010db8000000000000000000000001")
    assert header_bytes[32:48] == bytes.fromhex("20010db8000000000000000000000002")
    assert header_bytes[48:] == b"\x00\x01\xff\xff" and len(header_bytes) == 52


def test_v2_of_two_families_is_a_local_header_without_addresses():
    assert v2(("10.0.0.1", 1), ("fd00::1", 2)) == V2_SIGNATURE + b"\x20\x00\x00\x00"


def test_header_picks_the_version():
    client, destination = ("10.1.1.1", 5), ("10.1.1.254", 8080)
    assert header("v1", client, destination) == v1(client, destination)
    assert header("v2", client, destination) == v2(client, destination)

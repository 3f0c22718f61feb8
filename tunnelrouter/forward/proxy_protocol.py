"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2): the first
bytes a backend reads, telling it the client's address and the one it connected to.

Only what a sender needs: version 1 is one text line, version 2 a binary block of
fixed size for TCP over IPv4 or IPv6 (command PROXY, no TLVs).
"""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21                         # version 2, command PROXY
_V2_TCP = {4: 0x11, 6: 0x21}             # AF_INET / AF_INET6, SOCK_STREAM
_V2_FIXED = struct.Struct("!12sBBH")
_V2_PORTS = struct.Struct("!HH")

Address = tuple[str, int]   # (IP address, port) as the socket module gives them


def header(version: str, client: Address, destination: Address) -> bytes:
    """The header for a TCP connection from ``client`` to ``destination`` (the address the
    client reached, on this host). Addresses of different families cannot be said in one
    header: that is ``UNKNOWN`` (v1) or ``LOCAL`` (v2), which consumers accept and then
    use the connection's own addresses."""
    return v1(client, destination) if version == "v1" else v2(client, destination)


def v1(client: Address, destination: Address) -> bytes:
    source, target = ipaddress.ip_address(client[0]), ipaddress.ip_address(destination[0])
    if source.version != target.version:
        return b"PROXY UNKNOWN\r\n"
    return (f"PROXY TCP{source.version} {source} {target} {client[1]} {destination[1]}\r\n"
            ).encode("ascii")


def v2(client: Address, destination: Address) -> bytes:
    source, target = ipaddress.ip_address(client[0]), ipaddress.ip_address(destination[0])
    if source.version != target.version:
        return _V2_FIXED.pack(V2_SIGNATURE, 0x20, 0x00, 0)   # LOCAL, UNSPEC, no address
    addresses = source.packed + target.packed + _V2_PORTS.pack(client[1], destination[1])
    return _V2_FIXED.pack(V2_SIGNATURE, _V2_PROXY, _V2_TCP[source.version],
                          len(addresses)) + addresses

"""The underlay sockets: raw IP for GRE, IP-in-IP and 6in4; UDP for VXLAN.

One socket per (local address, protocol) or (local address, port), shared by
every tunnel that uses it; the router demultiplexes what arrives by source
address (and GRE key or VNI). Raw sockets send with ``IP_HDRINCL`` so that the
outer TTL, TOS, DF and ID are the codec's, per packet.
"""

import socket

SOCKET_BUFFER = 4 << 20


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.setblocking(False)


def raw_socket(local: str, protocol: int) -> socket.socket:
    """An IPv4 raw socket for ``protocol`` bound to ``local``; we write the IP header."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, protocol)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        sock.bind((local, 0))
        _tune(sock)
    except OSError:
        sock.close()
        raise
    return sock


def udp_socket(local: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in local else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((local, port))
        _tune(sock)
    except OSError:
        sock.close()
        raise
    return sock

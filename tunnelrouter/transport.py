"""The underlay sockets: raw IP for GRE, IP-in-IP and 6in4; UDP for VXLAN.

One socket per (local address, protocol) or (local address, port), shared by
every tunnel that uses it; the router demultiplexes what arrives by source
address (and GRE key or VNI). Raw sockets send with ``IP_HDRINCL`` so that the
outer TTL, TOS, DF and ID are the codec's, per packet.

Path MTU is the router's business, not the kernel's: ``IP_PMTUDISC_PROBE``
makes the kernel send what fits the link even when it has cached a smaller
path MTU (it would otherwise refuse with EMSGSIZE until its own 10-minute
expiry), and ``IP_RECVERR`` queues every ICMP error about our datagrams, with
the quoted packet, for the router to read (``MSG_ERRQUEUE``).
"""

import socket

SOCKET_BUFFER = 4 << 20
SOCKET_TTL = 64
# <linux/in.h> and <linux/in6.h>; the socket module does not name these.
IP_MTU_DISCOVER, IP_RECVERR = 10, 11
IPV6_MTU_DISCOVER, IPV6_RECVERR = 23, 25
PMTUDISC_DONT, PMTUDISC_PROBE = 0, 3   # the same values for IPv4 and IPv6


def _tune(sock: socket.socket, dont_fragment: bool = True) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    discovery = PMTUDISC_PROBE if dont_fragment else PMTUDISC_DONT
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, discovery)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, discovery)
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


def udp_socket(local: str, port: int, dont_fragment: bool = True) -> socket.socket:
    """A UDP socket on ``local``:``port`` that reports each datagram's TOS / traffic class."""
    family = socket.AF_INET6 if ":" in local else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # The defaults a datagram without ancillary data gets: TTL 64 whatever the host's
        # ip_default_ttl, TOS 0; other values travel as ancillary data per datagram.
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, SOCKET_TTL)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, SOCKET_TTL)
        sock.bind((local, port))
        _tune(sock, dont_fragment)
    except OSError:
        sock.close()
        raise
    return sock

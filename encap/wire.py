"""Wire constants shared by every codec: protocol numbers, EtherTypes, headroom."""

import enum


class IpProto(enum.IntEnum):
    HOPOPT = 0
    ICMP = 1
    IPIP = 4
    TCP = 6
    UDP = 17
    IPV6 = 41
    IPV6_ROUTE = 43
    IPV6_FRAG = 44
    GRE = 47
    ESP = 50
    AH = 51
    ICMPV6 = 58
    IPV6_NONXT = 59
    IPV6_OPTS = 60


class EtherType(enum.IntEnum):
    IPV4 = 0x0800
    ARP = 0x0806
    IPV6 = 0x86DD
    TRANSPARENT_ETHERNET_BRIDGING = 0x6558


ETHERNET_HEADER_LENGTH = 14
IPV4_HEADER_LENGTH = 20
IPV6_HEADER_LENGTH = 40
UDP_HEADER_LENGTH = 8
TCP_HEADER_LENGTH = 20
TCP_CHECKSUM_OFFSET = 16   # where the checksum field is in a TCP header
UDP_CHECKSUM_OFFSET = 6    # and in a UDP header

VXLAN_PORT = 4789

# Room reserved in front of every packet buffer: the largest outer stack is
# IPv6 (40) + UDP (8) + GRE with every option (16) or VXLAN (8); 128 keeps the
# inner packet 16-byte aligned with space to spare.
HEADROOM = 128

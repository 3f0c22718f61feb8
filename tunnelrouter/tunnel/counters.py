"""Counters: the hot path increments integers, never logs."""

from encap.errors import DropReason


class Counters:
    """Packets and bytes each way, events, and drops by reason (indexed by ``DropReason``).

    ``rx`` counts packets delivered into the tunnel's device, ``tx`` datagrams sent
    to a peer (a frame flooded to three VTEPs is three); their bytes are the inner
    packets' bytes.
    """

    # What happened besides passing: fragmented, answered, reported, oddly marked, refused.
    EVENTS = ("fragments_sent", "icmp_sent", "icmp_rate_limited", "wan_errors",
              "ecn_unused_combinations", "fdb_full", "netlink_errors", "device_lost",
              "peer_keepalives_answered")
    __slots__ = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops") + EVENTS

    def __init__(self) -> None:
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        for event in self.EVENTS:
            setattr(self, event, 0)
        self.drops = [0] * (max(DropReason) + 1)

    def take_over(self, other: "Counters") -> None:
        """Carry on from ``other``'s counts (a tunnel changed in place keeps its history)."""
        for name in self.__slots__:
            value = getattr(other, name)
            setattr(self, name, list(value) if name == "drops" else value)

    def as_dict(self) -> dict:
        return {
            "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
            **{event: getattr(self, event) for event in self.EVENTS},
            "drops": self.drops_by_label(),
        }

    def drops_by_label(self) -> dict[str, int]:
        """The reasons that dropped anything: ``{"too_big": 3}``."""
        return {reason.label: self.drops[reason] for reason in DropReason if self.drops[reason]}

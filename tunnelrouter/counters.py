"""Per-tunnel counters: the hot path increments integers, never logs."""

from encap.errors import DropReason


class Counters:
    """Packets and bytes each way, and drops by reason (indexed by ``DropReason``)."""

    __slots__ = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops")

    def __init__(self) -> None:
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        self.drops = [0] * (max(DropReason) + 1)

    def as_dict(self) -> dict:
        return {
            "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
            "drops": {reason.label: self.drops[reason] for reason in DropReason
                      if self.drops[reason]},
        }

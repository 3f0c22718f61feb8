"""GRE (RFC 2784, RFC 2890): the header on the wire, what a receiver accepts, sequence rules."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from encap.checksum import internet_checksum
from encap.errors import DecodeError, DropReason, EncapConfigError
from encap.gre import NEW_EPOCH_RUN, REORDER_WINDOW, Gre

from tests.encap.strategies import ethernet_frames, ip_packets

# A minimal IPv4 packet: 20-byte header, no payload (its own checksum is irrelevant to GRE).
INNER_V4 = bytes.fromhex("4500001400000000400100000a0000010a000002")
INNER_V6 = bytes.fromhex("6000000000003a40") + bytes(15) + b"\x01" + bytes(15) + b"\x02"
FRAME = bytes.fromhex("ffffffffffff020000000001" "0806") + bytes(28)

OPTIONS = [dict(key=k, checksum=c, sequence=s)
           for k, c, s in itertools.product([None, 0xDEADBEEF], [False, True], [False, True])]


def test_golden_plain_header():
    # C=0 K=0 S=0, version 0, protocol 0x0800: 4 bytes then the packet.
    assert Gre().encap(INNER_V4) == bytes.fromhex("00000800") + INNER_V4


def test_golden_ipv6_and_gretap_protocol_types():
    assert Gre().encap(INNER_V6)[:4] == bytes.fromhex("000086dd")
    assert Gre(ethernet=True).encap(FRAME)[:4] == bytes.fromhex("00006558")


def test_golden_key_and_sequence():
    gre = Gre(key=0x2A, sequence=True)
    # K and S (0x3000), protocol, key 42, sequence 0 then 1.
    assert gre.encap(INNER_V4) == bytes.fromhex("30000800" "0000002a" "00000000") + INNER_V4
    assert gre.encap(INNER_V4)[8:12] == bytes.fromhex("00000001")


def test_golden_checksum_key_sequence_layout():
    wire = Gre(key=1, checksum=True, sequence=True).encap(INNER_V4)
    # C K S = 0xb000; then checksum + reserved1, key, sequence, in that order (RFC 2890 §2).
    assert wire[:4] == bytes.fromhex("b0000800")
    assert wire[6:8] == b"\0\0"                      # Reserved1
    assert wire[8:16] == bytes.fromhex("00000001" "00000000")
    unchecked = wire[:4] + b"\0\0" + wire[6:]
    assert int.from_bytes(wire[4:6], "big") == internet_checksum(unchecked)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@given(packet=ip_packets)
def test_round_trip_every_option_combination(options, packet):
    sender, receiver = Gre(**options), Gre(**options)
    assert receiver.decap_bytes(sender.encap(packet)) == packet
    assert receiver.decap_bytes(sender.encap(packet)) == packet


@given(ethernet_frames, st.sampled_from(OPTIONS))
def test_gretap_round_trip(frame, options):
    gre = Gre(ethernet=True, **options)
    assert Gre(ethernet=True, **options).decap_bytes(gre.encap(frame)) == frame


def test_overhead_is_four_bytes_per_option():
    assert [Gre(**o).overhead for o in OPTIONS] == [4, 8, 8, 12, 8, 12, 12, 16]


def refuse(receiver: Gre, wire: bytes) -> DropReason:
    with pytest.raises(DecodeError) as caught:
        receiver.decap(memoryview(wire))
    return caught.value.reason


def test_version_other_than_zero_is_dropped():
    # Version 1 is PPTP's enhanced GRE (RFC 2637), not ours.
    assert refuse(Gre(), bytes.fromhex("00010800") + INNER_V4) == DropReason.GRE_BAD_VERSION


@pytest.mark.parametrize("flags", ["4000", "0800", "0400"], ids=["routing", "strict route", "recursion"])
def test_rfc1701_bits_are_dropped(flags):
    assert refuse(Gre(), bytes.fromhex(flags + "0800") + INNER_V4) == DropReason.GRE_RESERVED_FLAGS


def test_reserved_bits_6_to_12_are_ignored():
    assert Gre().decap_bytes(bytes.fromhex("03f80800") + INNER_V4) == INNER_V4


def test_reserved1_is_ignored():
    wire = bytearray(Gre(checksum=True).encap(INNER_V4))
    wire[6:8] = b"\x12\x34"
    wire[4:6] = b"\0\0"
    wire[4:6] = internet_checksum(wire).to_bytes(2, "big")
    assert Gre(checksum=True).decap_bytes(wire) == INNER_V4


def test_bad_checksum_is_dropped_even_when_not_required():
    wire = bytearray(Gre(checksum=True).encap(INNER_V4))
    wire[-1] ^= 0x01
    assert refuse(Gre(), bytes(wire)) == DropReason.GRE_BAD_CHECKSUM
    assert refuse(Gre(checksum=True), bytes(wire)) == DropReason.GRE_BAD_CHECKSUM


def test_present_checksum_is_accepted_without_being_required():
    assert Gre().decap_bytes(Gre(checksum=True).encap(INNER_V4)) == INNER_V4


def test_missing_checksum_is_dropped_when_required():
    assert refuse(Gre(checksum=True), Gre().encap(INNER_V4)) == DropReason.GRE_MISSING_CHECKSUM


@pytest.mark.parametrize("sender, receiver", [
    (Gre(key=1), Gre(key=2)), (Gre(), Gre(key=2)), (Gre(key=1), Gre()),
], ids=["other key", "no key", "unexpected key"])
def test_key_must_match_exactly(sender, receiver):
    assert refuse(receiver, sender.encap(INNER_V4)) == DropReason.GRE_WRONG_KEY


def test_missing_sequence_is_dropped_when_required():
    assert refuse(Gre(sequence=True), Gre().encap(INNER_V4)) == DropReason.GRE_MISSING_SEQUENCE


def test_unrequired_sequence_is_accepted_in_any_order():
    receiver = Gre()
    for sequence in (5, 3, 3):
        sender = Gre(sequence=True)
        sender.next_sequence = sequence
        assert receiver.decap_bytes(sender.encap(INNER_V4)) == INNER_V4


def with_sequence(sequence: int) -> bytes:
    sender = Gre(sequence=True)
    sender.next_sequence = sequence
    return sender.encap(INNER_V4)


def test_sequence_gaps_are_forgiven_but_steps_back_are_dropped():
    receiver = Gre(sequence=True)
    for accepted in (10, 11, 15):
        receiver.decap(memoryview(with_sequence(accepted)))
    assert refuse(receiver, with_sequence(15)) == DropReason.GRE_OUT_OF_ORDER   # duplicate
    assert refuse(receiver, with_sequence(12)) == DropReason.GRE_OUT_OF_ORDER   # late
    receiver.decap(memoryview(with_sequence(16)))


def test_sequence_numbers_wrap_around():
    receiver = Gre(sequence=True)
    receiver.decap(memoryview(with_sequence(0xFFFFFFFF)))
    receiver.decap(memoryview(with_sequence(0)))
    assert refuse(receiver, with_sequence(0xFFFFFFF0)) == DropReason.GRE_OUT_OF_ORDER


def test_sender_sequence_wraps_to_zero():
    sender = Gre(sequence=True)
    sender.next_sequence = 0xFFFFFFFF
    assert [sender.encap(INNER_V4)[4:8] for _ in range(2)] == [b"\xff" * 4, b"\0" * 4]


@pytest.mark.parametrize("wire, receiver, reason", [
    (b"\x00\x00\x08", Gre(), DropReason.TRUNCATED),
    (bytes.fromhex("30000800000000"), Gre(), DropReason.TRUNCATED),
    (bytes.fromhex("00000806") + bytes(28), Gre(), DropReason.GRE_UNKNOWN_PROTOCOL),
    (bytes.fromhex("00006558") + FRAME, Gre(), DropReason.GRE_UNKNOWN_PROTOCOL),
    (bytes.fromhex("00000800") + INNER_V4, Gre(ethernet=True), DropReason.GRE_UNKNOWN_PROTOCOL),
    (bytes.fromhex("00006558") + FRAME[:13], Gre(ethernet=True), DropReason.INNER_MALFORMED),
    (bytes.fromhex("00000800") + INNER_V6, Gre(), DropReason.INNER_MALFORMED),
    (bytes.fromhex("000086dd") + INNER_V4, Gre(), DropReason.INNER_MALFORMED),
    (bytes.fromhex("00000800") + INNER_V4[:19], Gre(), DropReason.INNER_MALFORMED),
], ids=["short base", "short options", "arp", "tap frame on L3", "ip on gretap", "short frame",
        "v6 labelled v4", "v4 labelled v6", "cut inner"])
def test_malformed_is_dropped_with_its_reason(wire, receiver, reason):
    assert refuse(receiver, wire) == reason


def test_inner_packet_is_trimmed_to_its_own_length():
    assert Gre().decap_bytes(Gre().encap(INNER_V4) + b"pad") == INNER_V4


@pytest.mark.parametrize("sender, packet", [(Gre(), b"\x50" + bytes(19)), (Gre(), b""),
                                            (Gre(ethernet=True), bytes(13))],
                         ids=["version 5", "empty", "short frame"])
def test_unsendable_local_input_is_a_decode_error(sender, packet):
    with pytest.raises(DecodeError) as caught:
        sender.encap(packet)
    assert caught.value.reason == DropReason.INNER_MALFORMED


def test_key_out_of_range_is_a_config_error():
    with pytest.raises(EncapConfigError):
        Gre(key=1 << 32)


def test_a_packet_dropped_for_another_reason_does_not_move_the_sequence_window():
    receiver = Gre(sequence=True)
    receiver.decap(memoryview(with_sequence(10)))
    forged = bytearray(with_sequence(1_000_000))
    forged[2:4] = b"\x08\x06"   # ARP: dropped for its protocol, after the sequence was read
    assert refuse(receiver, bytes(forged)) == DropReason.GRE_UNKNOWN_PROTOCOL
    receiver.decap(memoryview(with_sequence(11)))   # still in order


def takes(receiver: Gre, sequence: int) -> bool:
    try:
        receiver.decap(memoryview(with_sequence(sequence)))
    except DecodeError as error:
        assert error.reason == DropReason.GRE_OUT_OF_ORDER
        return False
    return True


def test_a_restarted_sender_is_followed_after_a_short_run():
    receiver = Gre(sequence=True)
    for sequence in range(5000, 5010):
        receiver.decap(memoryview(with_sequence(sequence)))
    # The peer restarts and numbers from 0 again: far behind the window.
    dropped = [sequence for sequence in range(0, 10) if not takes(receiver, sequence)]
    assert dropped == list(range(NEW_EPOCH_RUN - 1))
    assert receiver.epochs == 1 and receiver.expected_sequence == 10


def test_late_packets_near_the_window_never_start_a_new_epoch():
    receiver = Gre(sequence=True)
    receiver.decap(memoryview(with_sequence(1000)))
    for sequence in range(1000 - REORDER_WINDOW, 1000):
        assert refuse(receiver, with_sequence(sequence)) == DropReason.GRE_OUT_OF_ORDER
    assert receiver.epochs == 0


def test_a_forged_number_far_ahead_costs_only_a_short_run():
    receiver = Gre(sequence=True)
    receiver.decap(memoryview(with_sequence(100)))
    receiver.decap(memoryview(with_sequence(0x7000_0000)))   # accepted: gaps are forgiven
    accepted = [sequence for sequence in range(101, 111) if takes(receiver, sequence)]
    assert accepted == list(range(100 + NEW_EPOCH_RUN, 111))


def test_scattered_old_packets_do_not_add_up_to_an_epoch():
    receiver = Gre(sequence=True)
    receiver.decap(memoryview(with_sequence(1_000_000)))
    for sequence in (5, 50_000, 900, 300_000, 7, 40):   # far behind, but not a run
        assert refuse(receiver, with_sequence(sequence)) == DropReason.GRE_OUT_OF_ORDER
    assert receiver.epochs == 0


def test_a_sender_that_restarts_early_is_followed_too():
    receiver = Gre(sequence=True)
    for sequence in range(0, 32):     # still inside the window when the peer restarts
        receiver.decap(memoryview(with_sequence(sequence)))
    dropped = [sequence for sequence in range(0, 10) if not takes(receiver, sequence)]
    assert dropped == list(range(NEW_EPOCH_RUN - 1)) and receiver.epochs == 1

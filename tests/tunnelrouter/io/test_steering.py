"""The inner-flow choice (tunnelrouter/io/steering.py) as a specification: run by a small
classic BPF interpreter here, the program returns (src ^ dst ^ sport ^ dport) * 2654435761
>> 16 mod the workers, the same for a flow and its replies, behind an Ethernet header or
not; anything else is left to the kernel. The kernel runs both programs in
tests/netns/test_workers.py."""

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from tunnelrouter.io.steering import (ANY_WORKER, JEQ_K, LD_B_ABS, LD_H_ABS, LD_W_ABS,
                                      LD_W_IND, LDX_MEM, LDX_MSH, RET_A, RET_K, ST, TAX, to_ebpf,
                                      inner_flow_program)

ALU = {0xAC: lambda a, x, k: a ^ x, 0x54: lambda a, x, k: a & k, 0x74: lambda a, x, k: a >> k,
       0x24: lambda a, x, k: a * k, 0x94: lambda a, x, k: a % k}


def run(program: list[tuple], packet: bytes) -> int:
    """Classic BPF as the kernel runs it on a socket's packet (out of range: return 0)."""
    a = x = pc = 0
    memory = [0] * 16
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code in (LD_W_ABS, LD_H_ABS, LD_B_ABS, LD_W_IND):
            at = k + (x if code == LD_W_IND else 0)
            size = {LD_H_ABS: 2, LD_B_ABS: 1}.get(code, 4)
            if at + size > len(packet):
                return 0
            a = int.from_bytes(packet[at:at + size], "big")
        elif code == LDX_MSH:
            x = 4 * (packet[k] & 0xF)
        elif code == LDX_MEM:
            x = memory[k]
        elif code == ST:
            memory[k] = a
        elif code == TAX:
            x = a
        elif code in ALU:
            a = ALU[code](a, x, k) & 0xFFFFFFFF
        elif code == JEQ_K:
            pc += jt if a == k else jf
        elif code == RET_A:
            return a
        elif code == RET_K:
            return k
        else:
            raise AssertionError(f"unknown instruction {code:#x}")


def expected(src: bytes, dst: bytes, sport: int, dport: int, workers: int) -> int:
    folded = 0
    for address in (src, dst):
        for at in range(0, len(address), 4):
            folded ^= int.from_bytes(address[at:at + 4], "big")
    folded ^= sport ^ dport
    return ((folded * 2654435761 & 0xFFFFFFFF) >> 16) % workers


def packet(version: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    ports = struct.pack("!HHHH", sport, dport, 8, 0)
    if version == 4:
        return struct.pack("!BBHHHBBH", 0x45, 0, 28, 0, 0, 64, 17, 0) + src + dst + ports
    return struct.pack("!IHBB", 6 << 28, 8, 17, 64) + src + dst + ports


addresses = st.one_of(
    st.tuples(st.just(4), st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.just(6), st.binary(min_size=16, max_size=16),
              st.binary(min_size=16, max_size=16)))
ports = st.integers(0, 65535)


@given(addresses, ports, ports, st.integers(1, 64), st.booleans())
def test_a_flow_and_its_replies_get_one_worker_the_documented_one(ends, sport, dport, workers,
                                                                  ethernet):
    version, src, dst = ends
    link = bytes(12) + (b"\x08\x00" if version == 4 else b"\x86\xdd") if ethernet else b""
    program = inner_flow_program(len(link), workers, ethernet)
    there = run(program, link + packet(version, src, dst, sport, dport))
    back = run(program, link + packet(version, dst, src, dport, sport))
    assert there == back == expected(src, dst, sport, dport, workers)


def test_other_frames_and_packets_are_left_to_the_kernel():
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    assert run(inner_flow_program(14, 4, True), arp) == ANY_WORKER
    not_ip = bytes([0x10]) + bytes(40)
    assert run(inner_flow_program(0, 4, False), not_ip) == ANY_WORKER


def test_even_ports_alone_still_spread():
    src, dst = ipaddress.ip_address("10.0.0.1").packed, ipaddress.ip_address("10.0.0.2").packed
    program = inner_flow_program(0, 2, False)
    chosen = [run(program, packet(4, src, dst, 32768 + 2 * n, 443)) for n in range(64)]
    assert 16 <= chosen.count(0) <= 48


def test_every_ebpf_jump_lands_inside_the_program_and_it_ends_in_exit():
    for ethernet, ip in ((False, 0), (True, 14), (True, 22)):
        code = to_ebpf(inner_flow_program(ip, 3, ethernet))
        for at, (opcode, _, _, offset, _) in enumerate(code):
            if opcode & 0x07 == 0x05 and opcode != 0x95:   # a jump
                assert 0 <= at + 1 + offset < len(code)
        assert code[-1][0] == 0x95

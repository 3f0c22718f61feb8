"""Which worker takes a flow: the small programs the kernel runs to choose.

With several workers (``workers.py``) the kernel picks a worker's socket of a UDP port
(SO_REUSEPORT) and a worker's queue of a device (IFF_MULTI_QUEUE) for each packet. Left
to itself it would choose badly: every datagram of a tunnel comes from the same outer
address and port, so the socket group's hash gives a peer's whole traffic to one worker;
and a device sends a flow to the queue its replies were last written to, which for the
raw-socket modes (read by worker 0 alone) is always worker 0's. Both choose by the inner
flow instead, with one function: a classic BPF program for the socket group
(``SO_ATTACH_REUSEPORT_CBPF``), and the same program, translated to eBPF, for the device
(``TUNSETSTEERINGEBPF``). The choice is symmetric (addresses and ports XORed), so a flow
and its replies meet in one worker at both routers.
"""

import ctypes
import errno
import os
import platform
import socket
import struct

from tunnelrouter.io.errors import SystemProblem

# Classic BPF (<linux/filter.h>); the eBPF class of each ALU and load is the same number.
LD_W_ABS, LD_H_ABS, LD_B_ABS, LD_W_IND, LDX_MSH, LDX_MEM, ST = \
    0x20, 0x28, 0x30, 0x40, 0xB1, 0x61, 0x02
XOR_X, AND_K, RSH_K, MUL_K, MOD_K = 0xAC, 0x54, 0x74, 0x24, 0x94
TAX, JEQ_K, RET_A, RET_K = 0x07, 0x15, 0x16, 0x06
_ETHERTYPE_IPV4, _ETHERTYPE_IPV6 = 0x0800, 0x86DD
ANY_WORKER = 0xFFFFFFFF   # past the last socket: the kernel picks by its own hash


def inner_flow_program(ip: int, workers: int, ethernet: bool) -> list[tuple[int, int, int, int]]:
    """A classic BPF program (code, jt, jf, k) that returns the worker of the inner flow of a
    packet whose inner IP header is ``ip`` bytes in (behind an Ethernet header if
    ``ethernet``): (src ^ dst ^ (sport ^ dport)) * 2654435761 >> 16, mod ``workers``.
    Multiplied, as Knuth hashes, so that every bit counts (connect() gives even ports
    only). Packets other than IPv4 and IPv6 are left to the kernel's hash."""
    def ports_and_choice() -> list[tuple[int, int, int, int]]:
        # A = M[0] ^ ((P ^ P >> 16) & 0xFFFF), P the word after the IP header (the ports
        # of TCP and UDP; of IPv6, the first word after the fixed header).
        return [(TAX, 0, 0, 0), (RSH_K, 0, 0, 16), (XOR_X, 0, 0, 0), (AND_K, 0, 0, 0xFFFF),
                (LDX_MEM, 0, 0, 0), (XOR_X, 0, 0, 0), (MUL_K, 0, 0, 2654435761),
                (RSH_K, 0, 0, 16), (MOD_K, 0, 0, workers), (RET_A, 0, 0, 0)]
    ipv4 = [(LD_W_ABS, 0, 0, ip + 12), (TAX, 0, 0, 0), (LD_W_ABS, 0, 0, ip + 16),
            (XOR_X, 0, 0, 0), (ST, 0, 0, 0), (LDX_MSH, 0, 0, ip), (LD_W_IND, 0, 0, ip)]
    ipv4 += ports_and_choice()
    ipv6 = [(LD_W_ABS, 0, 0, ip + 8)]
    for word in range(12, 40, 4):   # both addresses, a word at a time
        ipv6 += [(TAX, 0, 0, 0), (LD_W_ABS, 0, 0, ip + word), (XOR_X, 0, 0, 0)]
    ipv6 += [(ST, 0, 0, 0), (LD_W_ABS, 0, 0, ip + 40)] + ports_and_choice()
    # The ethertype (or the IP version), then: IPv4 (or on), IPv6 (or on), anything else.
    if ethernet:
        head = [(LD_H_ABS, 0, 0, ip - 2)]
        four, six = _ETHERTYPE_IPV4, _ETHERTYPE_IPV6
    else:
        head = [(LD_B_ABS, 0, 0, ip), (RSH_K, 0, 0, 4)]
        four, six = 4, 6
    return head + [(JEQ_K, 0, len(ipv4), four)] + ipv4 + \
        [(JEQ_K, 1, 0, six), (RET_K, 0, 0, ANY_WORKER)] + ipv6


def attach_program(sock: socket.socket, option: int, program: list[tuple]) -> None:
    """Attach a classic BPF program, as (code, jt, jf, k) instructions (a struct sock_fprog:
    their number, and their address; the kernel copies them)."""
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *instruction)
                                                for instruction in program))
    sock.setsockopt(socket.SOL_SOCKET, option,
                    struct.pack("HL", len(program), ctypes.addressof(code)))


# -- the same in eBPF, for a device's queues -------------------------------------------------

# eBPF (<linux/bpf.h>): A is r0, X r7, M[0] r8; r6 holds the packet, as LD_ABS wants.
_MOV64_X, _MOV64_K, _AND32_K, _LSH32_K = 0xBF, 0xB7, 0x54, 0x64
_JNE_K, _JA, _EXIT = 0x55, 0x05, 0x95
_R0, _R1, _R6, _R7, _R8 = 0, 1, 6, 7, 8
BPF_PROG_LOAD, BPF_PROG_TYPE_SOCKET_FILTER = 5, 1
_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361,
                "s390x": 351, "i686": 357}


def to_ebpf(program: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int, int]]:
    """``program`` (as inner_flow_program makes them) in eBPF: (code, dst, src, off, imm)."""
    def one(code: int, k: int) -> list[tuple]:
        if code in (LD_W_ABS, LD_H_ABS, LD_B_ABS):
            return [(code, 0, 0, 0, k)]
        if code == LD_W_IND:
            return [(code, 0, _R7, 0, k)]
        if code == LDX_MSH:   # X = 4 * ([k] & 0xF); A is dead where the program uses it
            return [(LD_B_ABS, 0, 0, 0, k), (_AND32_K, _R0, 0, 0, 0xF),
                    (_LSH32_K, _R0, 0, 0, 2), (_MOV64_X, _R7, _R0, 0, 0)]
        if code == LDX_MEM:
            return [(_MOV64_X, _R7, _R8, 0, 0)]
        if code == ST:
            return [(_MOV64_X, _R8, _R0, 0, 0)]
        if code == TAX:
            return [(_MOV64_X, _R7, _R0, 0, 0)]
        if code == XOR_X:
            return [(code, _R0, _R7, 0, 0)]
        if code in (AND_K, RSH_K, MUL_K, MOD_K):   # 32-bit, as classic BPF's A
            return [(code, _R0, 0, 0, k)]
        if code == RET_A:
            return [(_EXIT, 0, 0, 0, 0)]
        if code == RET_K:
            return [(_MOV64_K, _R0, 0, 0, k), (_EXIT, 0, 0, 0, 0)]
        raise ValueError(f"no eBPF for classic BPF instruction {code:#x}")
    translated = [None if code == JEQ_K else one(code, k) for code, _, _, k in program]
    # Where each classic instruction starts in eBPF (a conditional jump takes one, or two
    # when both its ways jump).
    sizes = [len(each) if each is not None else (1 if 0 in program[i][1:3] else 2)
             for i, each in enumerate(translated)]
    starts = [sum(sizes[:i]) for i in range(len(program) + 1)]
    code = [(_MOV64_X, _R6, _R1, 0, 0)]   # the packet, for LD_ABS and LD_IND
    for i, each in enumerate(translated):
        if each is not None:
            code += each
            continue
        _, jt, jf, k = program[i]
        after = starts[i] + sizes[i]   # eBPF offsets count from the next instruction

        def offset(target: int, at: int) -> int:
            return starts[target] - at
        if jt == 0:
            code.append((_JNE_K, _R0, 0, offset(i + 1 + jf, after), k))
        elif jf == 0:
            code.append((JEQ_K, _R0, 0, offset(i + 1 + jt, after), k))
        else:
            code.append((JEQ_K, _R0, 0, offset(i + 1 + jt, after - 1), k))
            code.append((_JA, 0, 0, offset(i + 1 + jf, after), 0))
    return code


def load_steering(ip: int, workers: int, ethernet: bool) -> int:
    """Load the inner-flow program for a device's queues (``TUNSETSTEERINGEBPF``); its fd,
    which the caller keeps (it needs CAP_BPF or CAP_SYS_ADMIN to load, and no capability
    to attach: load before dropping privileges). SystemProblem if the kernel refuses."""
    number = _BPF_SYSCALL.get(platform.machine())
    if number is None:
        raise SystemProblem(f"no bpf() system call number known for {platform.machine()}")
    instructions = b"".join(
        struct.pack("<BBhi", code, src << 4 | dst, off, imm - (1 << 32) if imm >= 1 << 31 else imm)
        for code, dst, src, off, imm in to_ebpf(inner_flow_program(ip, workers, ethernet)))
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_ = ctypes.create_string_buffer(b"GPL")
    libc = ctypes.CDLL(None, use_errno=True)
    log = ctypes.create_string_buffer(1 << 16)
    for log_level in (0, 1):   # the verifier's log only to say why it refused
        attributes = ctypes.create_string_buffer(struct.pack(
            "<IIQQIIQII16s", BPF_PROG_TYPE_SOCKET_FILTER, len(instructions) // 8,
            ctypes.addressof(code), ctypes.addressof(license_), log_level,
            len(log) if log_level else 0, ctypes.addressof(log) if log_level else 0, 0, 0,
            b"tr_steering"), 128)
        fd = libc.syscall(number, BPF_PROG_LOAD, attributes, 128)
        if fd >= 0:
            return fd
        failed = ctypes.get_errno()
        if failed in (errno.EPERM, errno.EACCES):
            break
    said = log.value.decode(errors="replace").strip().splitlines()
    raise SystemProblem(f"cannot load the steering program: {os.strerror(failed)}"
                        + (f" (the verifier: {said[-1]})" if said else ""), errno=failed)

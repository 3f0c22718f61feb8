"""tshark as an independent decoder: read a pcap with checksum validation on (interop.md)."""

import subprocess


def run_tshark(path, fields: list[str], timeout: float = 60) -> list[dict[str, str]]:
    """One dict per frame, ``field -> value`` (nested layers joined with ';')."""
    command = [
        "tshark", "-n", "-r", str(path),
        "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
        "-o", "udp.check_checksum:TRUE", "-o", "tcp.analyze_sequence_numbers:FALSE",
        "-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=;",
    ]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    frames = []
    for line in result.stdout.splitlines():
        row = line.split("|", len(fields) - 1)
        assert len(row) == len(fields), line
        frames.append(dict(zip(fields, row)))
    return frames


def values(frame: dict[str, str], field: str) -> list[str]:
    """Every value of ``field`` in the frame, outermost layer first."""
    return [value for value in frame[field].split(";") if value]

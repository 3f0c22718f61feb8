"""Messages between the router and its forwarder process over a socket pair.

Length-prefixed pickles: both ends are this program and the pair is private to the
two processes (the child inherits its end, nobody else can reach it), and pickle
carries the validated configuration as it is, addresses and all. Non-blocking both
ways: what the peer does not read yet waits here, up to ``MAX_BACKLOG`` bytes.
"""

from __future__ import annotations

import pickle
import socket
import struct

_LENGTH = struct.Struct("!I")
MAX_BACKLOG = 16 << 20


class Channel:
    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock = sock
        self._received = bytearray()
        self._unsent = bytearray()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message) -> bool:
        """Queue ``message`` and send what the socket takes; False (and nothing queued)
        when the peer has left ``MAX_BACKLOG`` bytes unread."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(self._unsent) + len(data) > MAX_BACKLOG:
            return False
        self._unsent += _LENGTH.pack(len(data)) + data
        self.flush()
        return True

    def flush(self) -> bool:
        """Send what waits; whether it all went. OSError: the peer is gone."""
        while self._unsent:
            try:
                sent = self.sock.send(self._unsent)
            except (BlockingIOError, InterruptedError):
                return False
            del self._unsent[:sent]
        return True

    def receive(self) -> list:
        """The whole messages that have arrived; :attr:`closed` once the peer is gone."""
        while not self.closed:
            try:
                chunk = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.closed = True
            self._received += chunk
        messages = []
        while len(self._received) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._received)
            if len(self._received) < _LENGTH.size + length:
                break
            messages.append(pickle.loads(self._received[_LENGTH.size:_LENGTH.size + length]))
            del self._received[:_LENGTH.size + length]
        return messages

    def close(self) -> None:
        self.sock.close()

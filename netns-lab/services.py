"""hostB's services for the lab's port forwards: an HTTP server and a UDP echo.

    python3 services.py ADDRESS HTTP_PORT UDP_PORT DIRECTORY

HTTP serves DIRECTORY; UDP echoes each datagram back to its sender, upper-cased so that
an answer cannot be mistaken for a reflection of the question.
"""

import functools
import http.server
import socket
import sys
import threading


def echo(address: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        while True:
            data, client = sock.recvfrom(65535)
            sock.sendto(data.upper(), client)


def main() -> None:
    address, http_port, udp_port, directory = sys.argv[1:5]
    threading.Thread(target=echo, args=(address, int(udp_port)), daemon=True).start()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    http.server.ThreadingHTTPServer((address, int(http_port)), handler).serve_forever()


if __name__ == "__main__":
    main()

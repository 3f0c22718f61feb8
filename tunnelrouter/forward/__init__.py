"""Port forwards (``forwards:``): TCP and UDP services relayed to a backend, beside the tunnels.

- ``config.py``      a forward's keys (endpoints, durations, rates) and their checks
- ``limits.py``      allow/deny lists, the per-source token buckets, bounded LRU tables
- ``proxy_protocol.py``  the PROXY protocol header, v1 and v2
- ``forward.py``     what TCP and UDP forwards share: settings, counters, the listener
- ``tcp.py``         accept, non-blocking connect, the splice relay with half-close
- ``udp.py``         a session per client address, replies to the right client
- ``forwarder.py``   every forward on one loop; ``apply`` a new set as a diff
- ``worker.py``      the forwarder process; ``process.py`` the router's handle on it
- ``channel.py``     the messages between the two
"""

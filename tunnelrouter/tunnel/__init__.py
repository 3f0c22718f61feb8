"""The tunnel core, without system calls: endpoints (one per tunnel), demultiplexing, path
MTU, forwarding database, ICMP replies, counters. Packets and ``now`` in, actions out.

The package imports nothing itself: a reader of counters (``show``) need not load the
endpoints and the configuration models behind them."""

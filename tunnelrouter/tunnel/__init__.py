"""The tunnel core, without system calls: endpoints (one per tunnel), demultiplexing, path
MTU, forwarding database, ICMP replies, counters. Packets and ``now`` in, actions out."""

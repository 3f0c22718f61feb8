"""Every system call of the router: TUN/TAP devices, underlay sockets and their error
queues, netlink, the event loop. Nothing above this room touches a file descriptor."""

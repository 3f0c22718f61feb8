"""Which endpoint a tunnel gets, by what its mode's datagrams travel in."""

from tunnelrouter.modes import TunnelConfig, Underlay
from tunnelrouter.tunnel.endpoint import Endpoint
from tunnelrouter.tunnel.raw_endpoint import RawEndpoint
from tunnelrouter.tunnel.udp_endpoint import UdpEndpoint


def endpoint_for(config: TunnelConfig) -> Endpoint:
    """The endpoint for a tunnel, by what its mode's datagrams travel in."""
    if config.kind.underlay is Underlay.RAW:
        return RawEndpoint(config)
    return UdpEndpoint(config)

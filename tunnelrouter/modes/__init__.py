"""The encapsulations the router speaks, one file each; ``MODES`` maps a name to its Mode.

Adding one is a new file here that defines a :class:`~tunnelrouter.modes.base.Mode`
with its configuration model and registers it, plus its import below.
"""

from tunnelrouter.modes.base import MODES, Mode, TunnelConfig, Underlay
from tunnelrouter.modes import gre, ipip, vxlan  # noqa: F401  (each registers its modes)

__all__ = ["MODES", "Mode", "TunnelConfig", "Underlay"]

"""The p2pd network lab: real network namespaces, veth, bridges, nftables NAT and loss.

Import from here (``from tests.netlab import Lab``) or from the modules: `lab` (the `Lab`),
`nodes` (hosts, segments, routers), `netns` (finding and deleting lab namespaces), `presets`
(named topologies for ``tools/netlab``) and `fixtures` (pytest fixtures; imports pytest).
"""

from .lab import Lab, read_line
from .netns import LabError
from .nodes import Attachment, Host, Router, Segment

__all__ = ["Attachment", "Host", "Lab", "LabError", "Router", "Segment", "read_line"]

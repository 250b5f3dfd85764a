"""Ways for two p2pd peers to reach each other: LAN, WAN mapping, hole punching, relay, Tor, TCP.

Each transport only moves bytes; the secure session above it is the same on every path.
"""

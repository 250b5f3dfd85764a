"""p2pd: two people who share a passphrase get a private, end-to-end encrypted channel.

The package holds the secure core (derivation, Noise handshake, data packets),
the node that drives it, and the user interfaces.
"""

__version__ = "0.1.0"

"""The Noise Protocol Framework (revision 34) for 25519_ChaChaPoly_BLAKE2b, sans-IO.

p2pd authenticates peers with ``Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b``: the PSK
(derived from the shared passphrase) binds both sides to the rendezvous, and XX
exchanges static keys under encryption.  This package is generic over handshake
patterns so that it can be checked against every official vector of the suite.
It does no I/O: messages go in and out as bytes.
"""

from p2pd.noise._crypto import CipherState, NoiseError, generate_keypair, keypair_from_private
from p2pd.noise._state import HandshakeState

PROTOCOL_NAME = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"  # The handshake p2pd speaks on the wire.

__all__ = [
    "PROTOCOL_NAME",
    "CipherState",
    "HandshakeState",
    "NoiseError",
    "generate_keypair",
    "keypair_from_private",
]

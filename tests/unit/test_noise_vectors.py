"""p2pd.noise against the cacophony test vectors for 25519_ChaChaPoly_BLAKE2b.

Every vector is replayed both ways: the initiator's (and responder's) writes must
equal the recorded ciphertexts byte for byte, and the reading side must recover
the recorded payloads; then the handshake hashes and the transport messages,
which alternate direction after the handshake (one-way patterns: all from the
initiator), are checked with the split CipherStates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2pd.noise import CipherState, HandshakeState

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_VECTORS = REPO_ROOT.parent / "shared/vectors/noise/cacophony.txt"
PROJECT_VECTORS = REPO_ROOT / "tests/vectors/noise/cacophony.txt"
SUITE_SUFFIX = "_25519_ChaChaPoly_BLAKE2b"
EXPECTED_SUITE_VECTORS = 59  # What the shared README promises; guards against a broken filter.
ONE_WAY_PATTERNS = ("N", "K", "X")


def _vector_file() -> Path:
    return SHARED_VECTORS if SHARED_VECTORS.exists() else PROJECT_VECTORS


def _load_suite_vectors() -> list[dict[str, Any]]:
    vectors = json.loads(_vector_file().read_text())["vectors"]
    return [v for v in vectors if v["protocol_name"].endswith(SUITE_SUFFIX)]


VECTORS = _load_suite_vectors()


def _opt(vector: dict[str, Any], key: str) -> bytes | None:
    value = vector.get(key)
    return bytes.fromhex(value) if value is not None else None


def _side(vector: dict[str, Any], prefix: str, initiator: bool) -> HandshakeState:
    return HandshakeState(
        vector["protocol_name"],
        initiator=initiator,
        prologue=bytes.fromhex(vector[f"{prefix}_prologue"]),
        s=_opt(vector, f"{prefix}_static"),
        e=_opt(vector, f"{prefix}_ephemeral"),
        rs=_opt(vector, f"{prefix}_remote_static"),
        psks=[bytes.fromhex(p) for p in vector.get(f"{prefix}_psks", [])],
    )


def _is_one_way(protocol_name: str) -> bool:
    pattern = protocol_name.split("_")[1]
    return pattern.rstrip("0123456789+psk") in ONE_WAY_PATTERNS


def test_exactly_59_suite_vectors_are_found() -> None:
    assert len(VECTORS) == EXPECTED_SUITE_VECTORS
    assert any(v["protocol_name"] == "Noise_XXpsk3" + SUITE_SUFFIX for v in VECTORS)


def test_project_copy_is_identical_to_shared_vectors() -> None:
    if not SHARED_VECTORS.exists():
        pytest.skip(
            reason=f"shared vectors not present at {SHARED_VECTORS}; project copy used alone"
        )
    assert PROJECT_VECTORS.read_bytes() == SHARED_VECTORS.read_bytes()


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    init = _side(vector, "init", initiator=True)
    resp = _side(vector, "resp", initiator=False)
    one_way = _is_one_way(vector["protocol_name"])
    messages = vector["messages"]
    transports: tuple[CipherState, CipherState, CipherState, CipherState] | None = None
    for i, message in enumerate(messages):
        payload = bytes.fromhex(message["payload"])
        ciphertext = bytes.fromhex(message["ciphertext"])
        from_initiator = one_way or i % 2 == 0
        if transports is None:
            writer, reader = (init, resp) if from_initiator else (resp, init)
            assert writer.write_message(payload) == ciphertext, f"message {i}"
            assert reader.read_message_untrusted(ciphertext) == payload, f"message {i}"
            if init.complete:
                assert resp.complete
                assert init.handshake_hash.hex() == vector["handshake_hash"]
                assert resp.handshake_hash.hex() == vector["handshake_hash"]
                transports = (*init.split(), *resp.split())
        else:
            i_send, i_recv, r_recv, r_send = transports
            send, recv = (i_send, r_recv) if from_initiator else (r_send, i_recv)
            assert send.encrypt_with_ad(b"", payload) == ciphertext, f"message {i}"
            assert recv.decrypt_with_ad(b"", ciphertext) == payload, f"message {i}"
    assert transports is not None, "the handshake never completed"

"""The passphrase derivation: known answers, the spec re-implemented, strength, secrecy."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import nacl.pwhash.argon2id
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pd import derive as d
from p2pd.errors import WeakPassphraseError

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "derive.json").read_text("utf-8"))
SECRET_FIELDS = ("psk", "lan_key", "tag_key", "mac1_key", "cookie_key", "space_key", "onion_seed")


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["passphrase"].strip()[:20])
def test_known_answers(vector: dict[str, object]) -> None:
    params = d.derive(str(vector["passphrase"]), check=False)
    assert params.port == vector["port"]
    assert params.rendezvous_id.hex() == vector["rendezvous_id"]
    assert params.space_id.hex() == vector["space_id"]
    for name in SECRET_FIELDS:
        assert getattr(params, name).hex() == vector[name], name


def test_spec_reimplemented_from_protocol_md() -> None:
    """An independent reading of docs/protocol.md gives the first vector."""
    vector = VECTORS["vectors"][0]
    text = unicodedata.normalize("NFKC", vector["passphrase"]).strip().encode()
    master = nacl.pwhash.argon2id.kdf(
        32, text, b"p2pd/v1/argon2id", opslimit=3, memlimit=128 * 1024 * 1024
    )

    def sub(ctx: bytes, n: int = 32) -> bytes:
        return hashlib.blake2b(ctx, key=master, digest_size=n).digest()

    port = 49152 + int.from_bytes(sub(b"p2pd v1 port", 8), "little") % 16384
    assert port == vector["port"]
    assert sub(b"p2pd v1 noise psk").hex() == vector["psk"]
    assert sub(b"p2pd v1 rendezvous id", 16).hex() == vector["rendezvous_id"]
    assert sub(b"p2pd v1 onion seed").hex() == vector["onion_seed"]


def test_normalisation_makes_typing_variants_equal() -> None:
    plain, fancy = VECTORS["vectors"][0], VECTORS["vectors"][1]
    assert fancy["passphrase"] != plain["passphrase"]
    assert fancy["psk"] == plain["psk"]


def test_all_subkeys_distinct() -> None:
    params = d.params_from_master(b"\x07" * 32)
    values = [getattr(params, name) for name in SECRET_FIELDS]
    values += [params.rendezvous_id, params.space_id]
    assert len({v[:16] for v in values}) == len(values)


@given(st.binary(min_size=32, max_size=32))
@settings(max_examples=200)
def test_port_always_in_dynamic_range(master: bytes) -> None:
    assert 49152 <= d.params_from_master(master).port <= 65535


def test_public_view_has_no_secret() -> None:
    params = d.params_from_master(b"\x01" * 32)
    public = json.dumps(params.public())
    assert set(params.public()) >= {"port", "rendezvous_id", "space_id"}
    for name in SECRET_FIELDS:
        assert getattr(params, name).hex() not in public
        assert getattr(params, name).hex() not in repr(params)


@pytest.mark.parametrize(
    "weak", ["", "   ", "hunter2", "password123", "Tr0ub4dor&3", "blue sky", "aaaaaaaaaaaaaaaa"]
)
def test_weak_passphrases_refused(weak: str) -> None:
    with pytest.raises(WeakPassphraseError) as info:
        d.derive(weak)
    assert weak.strip() == "" or weak not in str(info.value)


@pytest.mark.parametrize(
    "strong", ["correct horse battery staple", "domelike-recital-onboard-imprint-dwarf"]
)
def test_strong_passphrases_pass_the_check(strong: str) -> None:
    d.check_strength(d.normalize(strong))


def test_empty_refused_even_without_check() -> None:
    with pytest.raises(WeakPassphraseError):
        d.derive(" \t ", check=False)


def test_argon2id_costs_are_the_specified_ones() -> None:
    assert (d.ARGON2_OPSLIMIT, d.ARGON2_MEMLIMIT) == (3, 128 * 1024 * 1024)
    assert len(d.ARGON2_SALT) == 16


def test_long_passphrases_are_judged_not_crashed() -> None:
    d.check_strength(d.normalize("correct horse battery staple " * 5))
    with pytest.raises(WeakPassphraseError):
        d.check_strength("a" * 200)

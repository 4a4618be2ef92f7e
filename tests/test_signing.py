"""proxy.signing: the partner's RSA signature profile, on exact bytes, and its key handling."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from proxy.signing import (
    Signer,
    Verifier,
    generate_key_pair,
    load_private_key,
    load_public_key,
    public_key_pem,
)

BODY = b'{"data": {"id": "R1", "type": "order", "attributes": {"product_code": "25k-xl", "client_number": "0812", "amount": 0.0}}}'


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@pytest.mark.parametrize("scheme", ["pss", "pkcs1v15"])
def test_round_trip(key: rsa.RSAPrivateKey, scheme: str) -> None:
    signer = Signer(key, scheme)  # type: ignore[arg-type]
    signature = signer.sign(BODY)
    assert base64.b64decode(signature, validate=True)  # standard base64 with padding
    assert len(base64.b64decode(signature)) == 256
    assert signer.verifier().verify(BODY, signature)
    assert Verifier.from_pem(public_key_pem(key), scheme).verify(BODY, signature)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["pss", "pkcs1v15"])
def test_a_tampered_byte_fails(key: rsa.RSAPrivateKey, scheme: str) -> None:
    signer = Signer(key, scheme)  # type: ignore[arg-type]
    signature = signer.sign(BODY)
    verifier = signer.verifier()
    for i in (0, len(BODY) // 2, len(BODY) - 1):
        tampered = BODY[:i] + bytes([BODY[i] ^ 0x01]) + BODY[i + 1 :]
        assert not verifier.verify(tampered, signature)
    assert not verifier.verify(BODY + b"\n", signature)  # a trailing newline is another message
    raw = bytearray(base64.b64decode(signature))
    raw[10] ^= 0x80
    assert not verifier.verify(BODY, base64.b64encode(bytes(raw)).decode())


def test_same_json_other_bytes_fails(key: rsa.RSAPrivateKey) -> None:
    compact = BODY.replace(b", ", b",").replace(b": ", b":")
    signature = Signer(key).sign(BODY)
    assert not Signer(key).verifier().verify(compact, signature)


def test_wrong_key_fails(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    signature = Signer(key).sign(BODY)
    assert not Signer(other_key).verifier().verify(BODY, signature)


def test_schemes_do_not_cross(key: rsa.RSAPrivateKey) -> None:
    pss = Signer(key, "pss").sign(BODY)
    v15 = Signer(key, "pkcs1v15").sign(BODY)
    assert not Verifier(key.public_key(), "pkcs1v15").verify(BODY, pss)
    assert not Verifier(key.public_key(), "pss").verify(BODY, v15)


def test_pss_signs_with_max_salt(key: rsa.RSAPrivateKey) -> None:
    """What py_sat's verifier demands: salt exactly modulus bytes - 32 - 2 (222 for RSA-2048)."""
    signature = base64.b64decode(Signer(key).sign(BODY))
    exact = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=256 - 32 - 2)
    key.public_key().verify(signature, BODY, exact, hashes.SHA256())  # raises if the salt differs


@pytest.mark.parametrize("salt", [padding.PSS.MAX_LENGTH, padding.PSS.DIGEST_LENGTH, 0, 20])
def test_verifier_accepts_any_pss_salt(key: rsa.RSAPrivateKey, salt: object) -> None:
    """MAX (py/Go/PHP), 32 = digest (node-sat), and anything else: PSS.AUTO recovers it."""
    pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt)  # type: ignore[arg-type]
    signature = base64.b64encode(key.sign(BODY, pad, hashes.SHA256())).decode()
    assert Verifier(key.public_key()).verify(BODY, signature)


def test_interoperates_with_pycryptodome_like_py_sat(key: rsa.RSAPrivateKey) -> None:
    """py_sat signs and verifies with pycryptodome PSS, salt = max; both directions must agree."""
    pytest.importorskip("Crypto")
    from Crypto.Hash import SHA256
    from Crypto.PublicKey import RSA
    from Crypto.Signature import pss

    theirs = RSA.import_key(pem(key, serialization.PrivateFormat.TraditionalOpenSSL))
    ours = Signer(key).sign(BODY)
    pss.new(theirs.public_key(), salt_bytes=222).verify(SHA256.new(BODY), base64.b64decode(ours))
    theirs_sig = base64.b64encode(pss.new(theirs, salt_bytes=222).sign(SHA256.new(BODY))).decode()
    assert Verifier(key.public_key()).verify(BODY, theirs_sig)


@pytest.mark.parametrize(
    "garbage",
    ["", "   ", "not base64!!", "AAAA", "QUJD" * 200, "é" * 10, "=" * 344, None, b"\xff\xfe"],
)
def test_garbage_signature_is_false(key: rsa.RSAPrivateKey, garbage: object) -> None:
    assert Signer(key).verifier().verify(BODY, garbage) is False  # type: ignore[arg-type]


def test_urlsafe_base64_is_refused(key: rsa.RSAPrivateKey) -> None:
    """The partner uses standard base64; a urlsafe form of the same bytes is not a valid header."""
    signer = Signer(key)
    for _ in range(20):  # find a signature whose standard form has '+' or '/'
        signature = signer.sign(BODY)
        if "+" in signature or "/" in signature:
            break
    else:  # pragma: no cover - 20 signatures without + or / is vanishingly unlikely
        pytest.skip("no signature with + or /")
    urlsafe = signature.replace("+", "-").replace("/", "_")
    assert not signer.verifier().verify(BODY, urlsafe)


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8]
)
def test_pkcs1_and_pkcs8_private_keys_load(key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat) -> None:
    data = pem(key, fmt)
    assert data.startswith(b"-----BEGIN RSA PRIVATE KEY" if fmt is serialization.PrivateFormat.TraditionalOpenSSL else b"-----BEGIN PRIVATE KEY")
    loaded = load_private_key(data)
    assert loaded.private_numbers() == key.private_numbers()
    assert load_private_key(data.decode()).key_size == 2048  # str works too
    assert Signer.from_pem(data).verifier().verify(BODY, Signer(key).sign(BODY))


@pytest.mark.parametrize(
    "fmt", [serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1]
)
def test_spki_and_pkcs1_public_keys_load(key: rsa.RSAPrivateKey, fmt: serialization.PublicFormat) -> None:
    data = key.public_key().public_bytes(serialization.Encoding.PEM, fmt)
    assert load_public_key(data).public_numbers() == key.public_key().public_numbers()


def _assert_clean(exc: pytest.ExceptionInfo[ValueError], data: bytes) -> None:
    """The message and the whole chain carry no line of the PEM body."""
    text = str(exc.value) + repr(exc.value.__cause__) + repr(exc.value.__context__ if not exc.value.__suppress_context__ else None)
    for line in data.decode().splitlines()[1:-1]:
        assert line not in text


def test_1024_bit_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    data = pem(small, serialization.PrivateFormat.PKCS8)
    with pytest.raises(ValueError, match="RSA-1024; at least RSA-2048") as exc:
        load_private_key(data)
    _assert_clean(exc, data)
    with pytest.raises(ValueError, match="RSA-1024"):
        load_public_key(public_key_pem(small))
    with pytest.raises(ValueError, match="RSA-1024"):
        Signer(small)


def test_ec_keys_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ValueError, match="not RSA") as exc:
        load_private_key(data)
    _assert_clean(exc, data)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="not RSA"):
        load_public_key(pub)


def test_unreadable_and_encrypted_keys_are_clear_errors(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="not a readable PEM"):
        load_private_key(b"hello")
    with pytest.raises(ValueError, match="not a readable PEM"):
        load_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(ValueError, match="encrypted") as exc:
        load_private_key(encrypted)
    _assert_clean(exc, encrypted)
    # A private key handed to the public loader is refused rather than half-used.
    data = pem(key, serialization.PrivateFormat.PKCS8)
    with pytest.raises(ValueError) as exc2:
        load_public_key(data)
    _assert_clean(exc2, data)


def test_unknown_scheme_is_refused(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="unknown signature scheme"):
        Signer(key, "pss-32")  # type: ignore[arg-type]


def test_reprs_show_no_key_material(key: rsa.RSAPrivateKey) -> None:
    signer, verifier = Signer(key), Signer(key).verifier()
    assert repr(signer) == "Signer(scheme='pss', key=RSA-2048)"
    assert repr(verifier) == "Verifier(scheme='pss', key=RSA-2048)"
    numbers = key.private_numbers()
    for text in (repr(signer), str(signer), repr(verifier)):
        assert str(numbers.p)[:12] not in text and str(numbers.public_numbers.n)[:12] not in text
    assert not hasattr(signer, "__dict__")  # slots: no stray attribute can hold a PEM copy


def test_generate_key_pair_writes_usable_pem_files(tmp_path: Path) -> None:
    files = generate_key_pair(tmp_path / "keys", "account")
    assert files.private == tmp_path / "keys" / "account.key"
    assert files.public.name == "account.pub"
    assert stat.S_IMODE(files.private.stat().st_mode) == 0o600
    assert files.private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert files.public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    signer = Signer.from_pem(files.private.read_bytes())
    assert Verifier.from_pem(files.public.read_bytes()).verify(BODY, signer.sign(BODY))
    assert signer.key_size == 2048
    with pytest.raises(ValueError):
        generate_key_pair(tmp_path, bits=1024)

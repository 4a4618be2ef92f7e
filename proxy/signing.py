"""RSA signatures for the partner protocol (Tokopedia B2B "SAT"), on ``cryptography``.

One job: turn a PEM key into something that signs or verifies *exact bytes*. What is signed is
the raw HTTP body as it goes on (or came off) the wire, never a re-serialised JSON document
(``partner/tokopedia-b2b-checkout.md`` section 3.1).

Profile (section 3.2/3.3 of the checkout notes):

- ``scheme="pss"`` (default): RSASSA-PSS, SHA-256, MGF1-SHA-256. Signing uses the maximum salt
  (modulus bytes - 32 - 2, 222 for RSA-2048), which is what py_sat, golang-sat and php-sat use and
  the only salt py_sat's verifier accepts. Verifying accepts any salt length (``PSS.AUTO``), so
  node-sat's salt-32 signatures verify too.
- ``scheme="pkcs1v15"``: RSASSA-PKCS1-v1_5 with SHA-256, for accounts configured that way.
- Signatures are standard base64 with ``=`` padding.

Keys: private keys in PEM, PKCS#1 (``RSA PRIVATE KEY``) or PKCS#8 (``PRIVATE KEY``), unencrypted;
public keys in PEM, SPKI (``PUBLIC KEY``) or PKCS#1 (``RSA PUBLIC KEY``). Anything that is not RSA
or is shorter than :data:`MIN_RSA_BITS` is a :class:`ValueError` whose message never contains key
material. Reprs show the scheme and key size only.

Example::

    signer = Signer.from_pem(Path("account.key").read_bytes())
    header = signer.sign(body)                      # -> "kq3...=="
    Verifier.from_pem(Path("account.pub").read_bytes()).verify(body, header)   # -> True
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding

Scheme = Literal["pss", "pkcs1v15"]
SCHEMES: Final[frozenset[str]] = frozenset(get_args(Scheme))
MIN_RSA_BITS: Final = 2048

__all__ = [
    "MIN_RSA_BITS",
    "SCHEMES",
    "KeyPairFiles",
    "Scheme",
    "Signer",
    "Verifier",
    "generate_key_pair",
    "load_private_key",
    "load_public_key",
    "public_key_pem",
]


def _as_bytes(pem: bytes | str) -> bytes:
    return pem.encode("ascii", "replace") if isinstance(pem, str) else pem


def _check_scheme(scheme: str) -> Scheme:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown signature scheme {scheme!r}; one of {sorted(SCHEMES)}")
    return scheme  # type: ignore[return-value]


def _check_size(bits: int, what: str) -> None:
    if bits < MIN_RSA_BITS:
        raise ValueError(f"{what} is RSA-{bits}; at least RSA-{MIN_RSA_BITS} is required")


def load_private_key(pem: bytes | str) -> rsa.RSAPrivateKey:
    """Parse an unencrypted RSA private key in PEM (PKCS#1 or PKCS#8).

    Raises:
        ValueError: not PEM, encrypted, not RSA, or fewer than :data:`MIN_RSA_BITS` bits. The
            message says which, never what the key contains.
    """
    try:
        key = serialization.load_pem_private_key(_as_bytes(pem), password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise ValueError("private key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(
            "private key is not a readable PEM key (expected 'BEGIN RSA PRIVATE KEY' or 'BEGIN PRIVATE KEY')"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"private key is {_kind(key)}, not RSA")
    _check_size(key.key_size, "private key")
    return key


def load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    """Parse an RSA public key in PEM (SPKI ``PUBLIC KEY`` or PKCS#1 ``RSA PUBLIC KEY``).

    Raises:
        ValueError: not PEM, not RSA, or fewer than :data:`MIN_RSA_BITS` bits.
    """
    try:
        key = serialization.load_pem_public_key(_as_bytes(pem))
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(
            "public key is not a readable PEM key (expected 'BEGIN PUBLIC KEY' or 'BEGIN RSA PUBLIC KEY')"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"public key is {_kind(key)}, not RSA")
    _check_size(key.key_size, "public key")
    return key


def _kind(key: object) -> str:
    """A key's algorithm in words (``EllipticCurvePrivateKey`` -> "an EllipticCurve key")."""
    name = type(key).__name__
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return f"an {name.lstrip('_')} key"


def public_key_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    """The SPKI PEM (``BEGIN PUBLIC KEY``) of a key; what golang-sat's parser requires."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _padding(scheme: Scheme, *, signing: bool) -> AsymmetricPadding:
    if scheme == "pkcs1v15":
        return padding.PKCS1v15()
    salt = padding.PSS.MAX_LENGTH if signing else padding.PSS.AUTO
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt)


class Signer:
    """Signs exact bytes with one RSA private key; ``sign(body)`` gives the ``Signature`` header."""

    __slots__ = ("_key", "_padding", "scheme")

    def __init__(self, key: rsa.RSAPrivateKey, scheme: Scheme = "pss") -> None:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"signing key is {_kind(key)}, not RSA")
        _check_size(key.key_size, "signing key")
        self.scheme: Scheme = _check_scheme(scheme)
        self._key = key
        self._padding = _padding(self.scheme, signing=True)

    @classmethod
    def from_pem(cls, pem: bytes | str, scheme: Scheme = "pss") -> Signer:
        """A signer for a PEM private key (see :func:`load_private_key`)."""
        return cls(load_private_key(pem), scheme)

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def sign(self, body: bytes) -> str:
        """Standard base64 (with padding) of the signature over exactly ``body``."""
        signature = self._key.sign(body, self._padding, hashes.SHA256())
        return base64.b64encode(signature).decode("ascii")

    def verifier(self) -> Verifier:
        """A verifier for this signer's public half, with the same scheme."""
        return Verifier(self._key.public_key(), self.scheme)

    def public_key_pem(self) -> bytes:
        return public_key_pem(self._key)

    def __repr__(self) -> str:
        return f"Signer(scheme={self.scheme!r}, key=RSA-{self._key.key_size})"


class Verifier:
    """Checks a base64 signature over exact bytes with one RSA public key.

    :meth:`verify` answers True or False and never raises for anything a peer can send: a missing,
    non-base64, wrong-length or simply wrong signature is ``False``.
    """

    __slots__ = ("_key", "_padding", "_size", "scheme")

    def __init__(self, key: rsa.RSAPublicKey, scheme: Scheme = "pss") -> None:
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"verifying key is {_kind(key)}, not an RSA public key")
        _check_size(key.key_size, "verifying key")
        self.scheme: Scheme = _check_scheme(scheme)
        self._key = key
        self._size = (key.key_size + 7) // 8
        self._padding = _padding(self.scheme, signing=False)

    @classmethod
    def from_pem(cls, pem: bytes | str, scheme: Scheme = "pss") -> Verifier:
        """A verifier for a PEM public key (see :func:`load_public_key`)."""
        return cls(load_public_key(pem), scheme)

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def verify(self, body: bytes, signature_b64: str | bytes | None) -> bool:
        """Whether ``signature_b64`` (standard base64) signs exactly ``body``."""
        if not signature_b64:
            return False
        try:
            signature = base64.b64decode(signature_b64.strip(), validate=True)
        except (binascii.Error, ValueError):  # not base64, or a str with non-ASCII characters
            return False
        if len(signature) != self._size:
            return False
        try:
            self._key.verify(signature, body, self._padding, hashes.SHA256())
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"Verifier(scheme={self.scheme!r}, key=RSA-{self._key.key_size})"


@dataclass(frozen=True, slots=True)
class KeyPairFiles:
    """Where :func:`generate_key_pair` wrote a pair: ``private`` (PKCS#8 PEM, mode 0600), ``public`` (SPKI PEM)."""

    private: Path
    public: Path


def generate_key_pair(directory: str | os.PathLike[str], name: str = "key", bits: int = MIN_RSA_BITS) -> KeyPairFiles:
    """Generate an RSA key pair and write ``<name>.key`` and ``<name>.pub`` (PEM) into ``directory``.

    For ``demo``, the sandbox's self-made keys and tests. The private file is created with mode
    0600 before anything is written to it.
    """
    _check_size(bits, "a generated key")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public.write_bytes(public_key_pem(key))
    return KeyPairFiles(private, public)


def key_problem(pem: str, *, private: bool) -> tuple[str | None, str]:
    """For ``check``: (what is wrong and how to fix it, or None; a one-line summary of the key).

    Never includes key material: only the kind and size of the key."""
    try:
        key = load_private_key(pem) if private else load_public_key(pem)
    except ValueError as exc:
        want = "an RSA private key (PEM, PKCS#1 or PKCS#8, unencrypted)" if private else "an RSA public key (PEM)"
        return f"{exc}; it must be {want} of at least {MIN_RSA_BITS} bits", ""
    return None, f"RSA-{key.key_size} {'private' if private else 'public'} key loads"

"""The two RSA keys the sandbox partner works with.

- ``account``: the partner *account's* public key. Checkout bodies must be signed with its
  private half (the sidecar's ``TOKOPEDIA_PRIVATE_KEY``); the sandbox verifies with this one.
- ``signer``: the sandbox's *own* private key ("Tokopedia's key"). It signs every 200 status
  answer; clients verify with its public half (the sidecar's ``TOKOPEDIA_PUBLIC_KEY``).

When the sandbox makes the account pair itself (tests, ``demo``, a bare ``sandbox``), it keeps
the private half as ``account_signer`` so a caller can sign checkouts; with a configured account
key it has none. Generation is lazy (:meth:`proxy.sandbox.state.SandboxState.keys`), so apps that
never see a checkout pay nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.signing import MIN_RSA_BITS, Signer, Verifier, generate_key_pair, load_private_key, public_key_pem


@dataclass(frozen=True, slots=True)
class SandboxKeys:
    account: Verifier
    signer: Signer
    account_signer: Signer | None = None

    @property
    def verifier(self) -> Verifier:
        """Verifies what :attr:`signer` signs: the client's view of the sandbox's key."""
        return self.signer.verifier()

    @classmethod
    def generate(cls) -> SandboxKeys:
        """Fresh account and sandbox pairs, both RSA-2048, held in memory only."""
        account = Signer(rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS))
        own = Signer(rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS))
        return cls(account=account.verifier(), signer=own, account_signer=account)

    @classmethod
    def from_files(cls, public_key: str | Path, signing_key: str | Path) -> SandboxKeys:
        """Keys from PEM files: the account's public key and the sandbox's private key.

        Raises:
            ValueError: a file holds no usable key (the message names the file, not its content).
            OSError: a file cannot be read.
        """
        try:
            account = Verifier.from_pem(Path(public_key).read_bytes())
        except ValueError as exc:
            raise ValueError(f"{public_key}: {exc}") from None
        try:
            own = Signer.from_pem(Path(signing_key).read_bytes())
        except ValueError as exc:
            raise ValueError(f"{signing_key}: {exc}") from None
        return cls(account=account, signer=own)


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """The PEM files a sandbox run uses; ``account_private`` only when the sandbox made that pair."""

    account_public: Path
    sandbox_private: Path
    sandbox_public: Path
    account_private: Path | None = None

    def keys(self) -> SandboxKeys:
        return SandboxKeys.from_files(self.account_public, self.sandbox_private)


def prepare_key_files(public_key: str | Path | None, signing_key: str | Path | None, directory: Path) -> KeyFiles:
    """Use the given files and generate the missing ones into ``directory``.

    - no ``public_key``: an account pair ``account.key`` / ``account.pub`` is made; its private
      half is what a client (or the sidecar's ``TOKOPEDIA_PRIVATE_KEY_FILE``) signs checkouts with;
    - no ``signing_key``: a sandbox pair ``sandbox.key`` / ``sandbox.pub``; with one, its public
      half is written to ``sandbox.pub`` so clients know what to verify with.

    Raises:
        ValueError: a given file holds no usable key (the message names the file).
        OSError: a file cannot be read or written.
    """
    account_private = None
    if public_key is None:
        pair = generate_key_pair(directory, "account")
        public_key, account_private = pair.public, pair.private
    if signing_key is None:
        pair = generate_key_pair(directory, "sandbox")
        signing_key, sandbox_public = pair.private, pair.public
    else:
        try:
            derived = public_key_pem(load_private_key(Path(signing_key).read_bytes()))
        except ValueError as exc:
            raise ValueError(f"{signing_key}: {exc}") from None
        directory.mkdir(parents=True, exist_ok=True)
        sandbox_public = directory / "sandbox.pub"
        sandbox_public.write_bytes(derived)
    return KeyFiles(Path(public_key), Path(signing_key), sandbox_public, account_private)

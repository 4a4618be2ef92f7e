"""One set of test RSA keys per test process: the partner account's pair (the sidecar signs
checkouts with its private half, the sandbox verifies with its public half) and the sandbox's own
pair (it signs status answers; the sidecar verifies with the public half). Generated, never shipped."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

from proxy.sandbox.keys import SandboxKeys
from proxy.signing import Signer, Verifier, generate_key_pair


@dataclass(frozen=True)
class KeySet:
    sandbox: SandboxKeys
    account_private_pem: str
    account_public_pem: str
    sandbox_public_pem: str


@functools.cache
def keys_for_tests() -> KeySet:
    with tempfile.TemporaryDirectory(prefix="pp-test-keys-") as tmp:
        account = generate_key_pair(Path(tmp), "account")
        own = generate_key_pair(Path(tmp), "sandbox")
        account_private, account_public = account.private.read_text(), account.public.read_text()
        sandbox_private, sandbox_public = own.private.read_text(), own.public.read_text()
    keys = SandboxKeys(account=Verifier.from_pem(account_public), signer=Signer.from_pem(sandbox_private), account_signer=Signer.from_pem(account_private))
    return KeySet(keys, account_private, account_public, sandbox_public)

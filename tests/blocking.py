"""blockbuster, plus the TLS set-up calls that read files in C (no Python ``open`` to catch).

``ssl.create_default_context`` (the system CA bundle), ``SSLContext.load_default_certs`` /
``set_default_verify_paths``, ``load_verify_locations`` (a CA file) and ``load_cert_chain`` (a
client certificate) read from disk inside OpenSSL: stock blockbuster does not see them. Here they
count as blocking calls too when made on the event loop with ``scanned`` code on the stack.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from blockbuster import BlockBuster, BlockBusterFunction

TLS_FILE_CALLS = ("load_verify_locations", "load_cert_chain", "load_default_certs", "set_default_verify_paths")


@contextmanager
def no_blocking_calls(scanned: Sequence[str] = ("proxy",)) -> Iterator[BlockBuster]:
    bb = BlockBuster(list(scanned))
    for name in TLS_FILE_CALLS:
        bb.functions[f"ssl.SSLContext.{name}"] = BlockBusterFunction(ssl.SSLContext, name, scanned_modules=list(scanned))
    bb.functions["ssl.create_default_context"] = BlockBusterFunction(ssl, "create_default_context", scanned_modules=list(scanned))
    bb.activate()
    try:
        yield bb
    finally:
        bb.deactivate()

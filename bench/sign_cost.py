"""Cost of one checkout signature and one status verification with proxy.signing (RSA-2048).

    python bench/sign_cost.py [--bits 2048] [--number 500]

Prints microseconds per call (best of 5 timeit repeats). Numbers, not assertions: run it on the
machine you care about.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from proxy.signing import Signer  # noqa: E402

BODY = b'{"data": {"id": "R1", "type": "order", "attributes": {"product_code": "25k-xl", "client_number": "081234567890", "amount": 0.0}}}'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--number", type=int, default=500)
    args = parser.parse_args()
    key = rsa.generate_private_key(public_exponent=65537, key_size=args.bits)
    for scheme in ("pss", "pkcs1v15"):
        signer = Signer(key, scheme)  # type: ignore[arg-type]
        verifier = signer.verifier()
        signature = signer.sign(BODY)
        sign = min(timeit.repeat(lambda: signer.sign(BODY), number=args.number, repeat=5)) / args.number
        verify = min(timeit.repeat(lambda: verifier.verify(BODY, signature), number=args.number, repeat=5)) / args.number
        print(f"RSA-{args.bits} {scheme:8s}  sign {sign * 1e6:8.1f} us/call   verify {verify * 1e6:7.1f} us/call")


if __name__ == "__main__":
    main()

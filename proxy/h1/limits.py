"""The data listener's safety limits: what a client may send and how long it may take.

aiohttp had line and field caps but no header-read timeout, no cap on the header bytes a slow
client drips in, no keep-alive idle bound of ours and no pause when a client stops reading. These
are the bounds the listener enforces; ``H1Limits()`` holds the shipped defaults (in the spirit of
nginx's and Envoy's: a few KiB per line, about a hundred headers, seconds for a head).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class H1Limits:
    max_request_line: int = 8190        # target bytes; over it: 414 (the contract allows 4xx before the envelope)
    max_field_size: int = 8190          # one header line (name + value); over it: 431
    max_headers: int = 100              # header lines; over it: 431
    max_head_bytes: int = 64 * 1024     # the whole head, counted as bytes arrive (a dripping client too): 431
    max_body_buffer: int = 1024 * 1024  # body bytes buffered per request; the route's own limit is smaller (413)
    max_pipelined: int = 16             # parsed requests waiting behind the one in flight; more: stop reading
    header_timeout: float = 10.0        # first byte of a request to the end of its head; then 408 and close
    body_timeout: float = 30.0          # end of the head to the end of the body; then close
    keepalive_timeout: float = 60.0     # an idle keep-alive connection is closed after this
    linger_timeout: float = 2.0         # after an early answer (413, 405 on a body), discard the rest this long
    write_buffer_high: int = 64 * 1024  # transport write buffer above this: stop reading (the client reads slowly)
    write_buffer_low: int = 16 * 1024   # ...resume below this

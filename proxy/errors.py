"""The error tree: every error the sidecar can answer with, and where it came from.

::

    ProxyError                      status, type, code, origin, partner_code
    ├── DownstreamError             the app sent something we refuse (origin "downstream")
    │   ├── RouteNotFound           404
    │   ├── MethodNotAllowed        405 + Allow
    │   ├── UnsupportedMediaType    415
    │   ├── MissingHeader           400
    │   ├── InvalidPathParameter    400 BadRequest: a path template's {name} is not one clean segment
    │   ├── InvalidBody             400 the body is not JSON or misses what the route's schema requires
    │   ├── PayloadTooLarge         413
    │   └── ExpectationFailed       417
    ├── LocalError                  the sidecar cannot serve it (origin "local")
    │   ├── CircuitOpen             503 CircuitBreakerError + Retry-After
    │   ├── ClusterOverflow         503 + Retry-After (which threshold: max_requests, max_pending_requests, pending_timeout)
    │   └── TokenUnavailable        503 AuthenticationFailure + Retry-After
    ├── UpstreamError               the partner misbehaved at the transport level (origin "upstream")
    │   ├── UpstreamTimeout         504  written, no complete answer within ``timeout`` (idempotent methods)
    │   ├── UpstreamUnreachable     502  nothing written; or written and not one byte back (idempotent)
    │   ├── UpstreamProtocolError   502  part of an answer then the end, or an answer that breaks HTTP/1.1
    │   ├── OutcomeUnknown          504  a non-idempotent request (POST) was written and then any of the above
    │   └── SignatureInvalid        502  a 200 whose Signature is missing or does not verify
    └── PartnerError                the partner answered an error that errors.yaml mapped

aiohttp / asyncio / socket / parser exceptions become these types only at the boundaries that talk
to the network: each upstream transport (``proxy.upstream.http11``, ``proxy.upstream.aiohttp_client``,
one table each, through ``proxy.upstream.transport.wire_error``) and the token client; one place
(``proxy.reply``) renders them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

# Messages for the sidecar's own errors, per language. Partner errors carry theirs from errors.yaml.
LOCAL_MESSAGES: dict[str, dict[str, str]] = {
    "ROUTE_NOT_FOUND": {
        "en": "No route matches this path.",
        "id": "Tidak ada rute yang cocok dengan path ini.",
    },
    "METHOD_NOT_ALLOWED": {
        "en": "This method is not allowed on this route.",
        "id": "Metode ini tidak diizinkan pada rute ini.",
    },
    "UNSUPPORTED_MEDIA_TYPE": {
        "en": "Content-Type must be application/json.",
        "id": "Content-Type harus application/json.",
    },
    "INVALID_PATH_PARAMETER": {
        "en": "A path parameter is not valid: use 1 to 128 of the characters A-Z a-z 0-9 . _ ~ -.",
        "id": "Parameter path tidak valid: gunakan 1 sampai 128 karakter A-Z a-z 0-9 . _ ~ -.",
    },
    "INVALID_BODY": {
        "en": "The request body is not valid",
        "id": "Isi permintaan tidak valid",
    },
    "PARTNER_SIGNATURE_INVALID": {
        "en": "The partner's answer failed signature verification; it was not passed on.",
        "id": "Jawaban mitra gagal verifikasi tanda tangan; tidak diteruskan.",
    },
    "EXPECTATION_FAILED": {
        "en": "The Expect header is not supported.",
        "id": "Header Expect tidak didukung.",
    },
    "PAYLOAD_TOO_LARGE": {
        "en": "The request body is too large.",
        "id": "Isi permintaan terlalu besar.",
    },
    "MISSING_HEADER": {
        "en": "A mandatory header is missing.",
        "id": "Header wajib tidak ada.",
    },
    "CIRCUIT_OPEN": {
        "en": "The partner is failing; requests are paused briefly. Retry later.",
        "id": "Mitra sedang bermasalah; permintaan dijeda sebentar. Coba lagi nanti.",
    },
    "CLUSTER_OVERFLOW": {
        "en": "Too many requests in flight to the partner. Retry later.",
        "id": "Terlalu banyak permintaan yang sedang berjalan ke mitra. Coba lagi nanti.",
    },
    "TOKEN_UNAVAILABLE": {
        "en": "Could not obtain an access token from the partner. Retry later.",
        "id": "Tidak dapat memperoleh token akses dari mitra. Coba lagi nanti.",
    },
    "UPSTREAM_TIMEOUT": {
        "en": "The partner did not answer in time.",
        "id": "Mitra tidak menjawab tepat waktu.",
    },
    "UPSTREAM_UNREACHABLE": {
        "en": "The partner could not be reached.",
        "id": "Mitra tidak dapat dihubungi.",
    },
    "UPSTREAM_PROTOCOL_ERROR": {
        "en": "The partner sent an invalid response.",
        "id": "Mitra mengirim respons yang tidak valid.",
    },
    "UPSTREAM_OUTCOME_UNKNOWN": {
        "en": (
            "The request reached the partner but no complete answer came back, so it may or may not have"
            " been processed. Look the order up with the same data.id before retrying."
        ),
        "id": (
            "Permintaan sampai ke mitra tetapi tidak ada jawaban lengkap, jadi mungkin sudah atau belum"
            " diproses. Periksa pesanan dengan data.id yang sama sebelum mencoba lagi."
        ),
    },
    "INTERNAL_ERROR": {
        "en": "The sidecar failed unexpectedly.",
        "id": "Sidecar gagal secara tak terduga.",
    },
}


class ProxyError(Exception):
    """Base of every error that ends as the JSON envelope."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "InternalError"
    code: ClassVar[str] = "INTERNAL_ERROR"
    origin: ClassVar[str] = "local"

    def __init__(self, detail: str = "", *, headers: Mapping[str, str] | None = None) -> None:
        # ``detail`` is for logs only: it never reaches the app (messages are localized and fixed).
        super().__init__(detail or self.code)
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def partner_code(self) -> str | None:
        return None

    def message(self, language: str) -> str:
        table = LOCAL_MESSAGES.get(self.code, LOCAL_MESSAGES["INTERNAL_ERROR"])
        return table.get(language) or table["en"]


class DownstreamError(ProxyError):
    origin = "downstream"


class RouteNotFound(DownstreamError):
    status, type, code = 404, "RouteNotFound", "ROUTE_NOT_FOUND"


class MethodNotAllowed(DownstreamError):
    status, type, code = 405, "MethodNotAllowed", "METHOD_NOT_ALLOWED"

    def __init__(self, allowed: tuple[str, ...]) -> None:
        super().__init__(f"allowed: {', '.join(allowed)}", headers={"Allow": ", ".join(allowed)})


class UnsupportedMediaType(DownstreamError):
    status, type, code = 415, "UnsupportedMediaType", "UNSUPPORTED_MEDIA_TYPE"


class MissingHeader(DownstreamError):
    status, type, code = 400, "BadRequest", "MISSING_HEADER"

    def __init__(self, header: str) -> None:
        super().__init__(f"missing header {header}")
        self.header = header

    def message(self, language: str) -> str:
        return f"{super().message(language)} ({self.header})"


class InvalidPathParameter(DownstreamError):
    status, type, code = 400, "BadRequest", "INVALID_PATH_PARAMETER"


class InvalidBody(DownstreamError):
    """The message names the failing field (from the route's schema), never echoes a value."""

    status, type, code = 400, "InvalidBody", "INVALID_BODY"

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem

    def message(self, language: str) -> str:
        return f"{super().message(language)}: {self.problem}"


class ExpectationFailed(DownstreamError):
    status, type, code = 417, "ExpectationFailed", "EXPECTATION_FAILED"


class PayloadTooLarge(DownstreamError):
    status, type, code = 413, "PayloadTooLarge", "PAYLOAD_TOO_LARGE"


class LocalError(ProxyError):
    origin = "local"


def _retry_after(seconds: float) -> dict[str, str]:
    """Retry-After is whole seconds, rounded up, at least 1."""
    whole = int(seconds) if seconds == int(seconds) else int(seconds) + 1
    return {"Retry-After": str(max(1, whole))}


class CircuitOpen(LocalError):
    status, type, code = 503, "CircuitBreakerError", "CIRCUIT_OPEN"

    def __init__(self, cluster: str, retry_after: float) -> None:
        super().__init__(f"circuit open for cluster {cluster}", headers=_retry_after(retry_after))


class ClusterOverflow(LocalError):
    status, type, code = 503, "ClusterOverflow", "CLUSTER_OVERFLOW"

    def __init__(self, cluster: str, threshold: str = "max_requests") -> None:
        super().__init__(f"{threshold} reached for cluster {cluster}", headers=_retry_after(1))
        self.threshold = threshold


class TokenUnavailable(LocalError):
    status, type, code = 503, "AuthenticationFailure", "TOKEN_UNAVAILABLE"

    def __init__(self, provider: str, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(f"no token for {provider}: {reason}", headers=_retry_after(retry_after))
        self.reason = reason


class UpstreamError(ProxyError):
    origin = "upstream"
    # What the breaker and the retry policy call this failure (config: failures / retry.on).
    kind: ClassVar[str] = "connect_failure"
    # Whether the forwarder may send the request again (idempotent methods only, within its budget).
    retryable: ClassVar[bool] = True


class UpstreamTimeout(UpstreamError):
    status, type, code = 504, "GatewayTimeout", "UPSTREAM_TIMEOUT"
    kind = "timeout"


class UpstreamUnreachable(UpstreamError):
    status, type, code = 502, "BadGateway", "UPSTREAM_UNREACHABLE"


class UpstreamProtocolError(UpstreamError):
    status, type, code = 502, "BadGateway", "UPSTREAM_PROTOCOL_ERROR"
    kind = "5xx"  # a broken answer is the partner failing, like a 5xx


class OutcomeUnknown(UpstreamError):
    """A non-idempotent request (POST) was written, and then no complete, valid answer came back.

    The partner may have acted on it (money may have moved), so it is never retried, and the app is
    told to look the order up with the same ``data.id`` before sending it again. ``kind`` is what
    happened on the wire (``timeout``, ``connect_failure`` or ``5xx``), for the breaker.
    """

    status, type, code = 504, "OutcomeUnknown", "UPSTREAM_OUTCOME_UNKNOWN"
    retryable = False

    def __init__(self, detail: str = "", *, kind: str = "timeout") -> None:
        super().__init__(detail)
        self.kind = kind  # type: ignore[misc]  # per instance: the wire event behind it


class SignatureInvalid(UpstreamError):
    status, type, code = 502, "SignatureInvalid", "PARTNER_SIGNATURE_INVALID"
    kind = "signature"
    retryable = False  # raised on a complete answer, after the attempt: nothing to re-send

    def __init__(self, reason: str) -> None:
        super().__init__(f"partner signature {reason}")
        self.reason = reason  # "missing" | "invalid": the metric's label


class PartnerError(ProxyError):
    """A partner error answer, already mapped through errors.yaml (see ``proxy.config.errors_table``)."""

    origin = "upstream"

    def __init__(
        self,
        *,
        status: int,
        type_: str,
        code: str,
        messages: Mapping[str, str],
        default_language: str,
        partner_code: str | None,
        partner_status: int,
    ) -> None:
        super().__init__(f"partner {partner_status} {partner_code or '-'} -> {type_}")
        self._status = status
        self._type = type_
        self._code = code
        self._messages = messages
        self._default_language = default_language
        self._partner_code = partner_code
        self.partner_status = partner_status

    # Instance values shadow the ClassVars so one rendering path serves every error.
    @property
    def status(self) -> int:  # type: ignore[override]
        return self._status

    @property
    def type(self) -> str:  # type: ignore[override]
        return self._type

    @property
    def code(self) -> str:  # type: ignore[override]
        return self._code

    @property
    def partner_code(self) -> str | None:
        return self._partner_code

    def message(self, language: str) -> str:
        return (
            self._messages.get(language)
            or self._messages.get(self._default_language)
            or next(iter(self._messages.values()), self._code)
        )


class ConfigError(Exception):
    """One or more problems in the YAML files; each line is ``file:line: what is wrong and how to fix it``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

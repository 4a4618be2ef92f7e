"""The callback path: a request answered by plain calls, with no task and no coroutine, when
nothing has to be waited for.

Why: on the benchmark a Task per request, the futures, and the coroutine frames of the filters and
the transport cost more CPU than the sidecar's features. Most requests need none of that: the
token is in memory, a pooled connection and a slot are free, and there is no body to read. Such a
request runs its route's own filters as plain calls around ``Forwarder.start``:
``ValidateRequest.check``, ``InjectCredentials.attach``, then ``VerifyAnswer.check``,
``RewriteErrors.record`` and ``InjectCredentials.rejected``. It is answered from the partner connection's ``data_received``.

The same request takes a coroutine wherever it has to wait:
- Before anything happened (``FastRoute.run`` says False): no token in memory, or no connection
  ready. The listener then runs the whole chain as a task, as it does for every other route.
- After the first answer:
  - a retry runs the forwarder's ``_attempts`` in a task;
  - a rejected token runs ``InjectCredentials.recover`` in a task, over the rest of the chain.

Either way the outcome comes back through the request's ``FastCall``, its one ``Done`` callback.
Behaviour, metrics and logs are the chain's: these are the same filter objects, called in the same
order.

Its commonest request, a warm GET of an exact route answered 200-202, is done on the parser's bytes
by the route's lane (``proxy.lane``), which hands every other outcome back to ``FastCall`` and the
forwarder here.

A route qualifies (``FastRoute.of``) when its filters are, in this order, some of ``validate``,
``credentials``, ``error_rewrite`` and ``verify`` (``body`` and ``sign`` read a body or use the
executor), and its cluster's transport is ``http11``. A request qualifies when tracing is off and its
method has no body to forward.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial

from proxy.chain import build_chain
from proxy.exchange import Exchange, UpstreamResponse
from proxy.filters.credentials import InjectCredentials
from proxy.filters.error_rewrite import RewriteErrors
from proxy.filters.validate import ValidateRequest
from proxy.filters.verify import VerifyAnswer
from proxy.oauth.token import Token
from proxy.types import CompiledRoute, FastEnd, Filter, Next, Observer, ReplyTo, report_to
from proxy.upstream.forwarder import BODY_METHODS, Forwarder

_ORDER: tuple[type, ...] = (ValidateRequest, InjectCredentials, RewriteErrors, VerifyAnswer)


class FastRoute:
    """One route's callback path, compiled with its chain from the same filter objects."""

    __slots__ = ("validate", "credentials", "rewrite", "verify", "forwarder", "_inner")

    def __init__(
        self,
        forwarder: Forwarder,
        validate: ValidateRequest | None = None,
        credentials: InjectCredentials | None = None,
        rewrite: RewriteErrors | None = None,
        verify: VerifyAnswer | None = None,
    ) -> None:
        self.validate = validate
        self.credentials = credentials
        self.rewrite = rewrite
        self.verify = verify
        self.forwarder = forwarder
        # what a renewed token is re-sent through: the chain inside the credential filter
        self._inner: Next = build_chain([f for f in (rewrite, verify) if f is not None], forwarder)

    @classmethod
    def of(cls, filters: Sequence[Filter], forwarder: Forwarder) -> FastRoute | None:
        """The route's callback path, or None when its chain has a filter that needs a coroutine,
        the filters are in another order, or its cluster is not on the http11 transport."""
        if forwarder.cluster.pool is None:
            return None
        found: dict[type, Filter] = {}
        position = 0
        for f in filters:
            kind = type(f)
            if kind not in _ORDER[position:]:
                return None  # another filter, a repeated one, or the shipped order changed
            position = _ORDER.index(kind) + 1
            found[kind] = f
        return cls(
            forwarder,
            validate=found.get(ValidateRequest),  # type: ignore[arg-type]
            credentials=found.get(InjectCredentials),  # type: ignore[arg-type]
            rewrite=found.get(RewriteErrors),  # type: ignore[arg-type]
            verify=found.get(VerifyAnswer),  # type: ignore[arg-type]
        )

    def run(self, ex: Exchange, end: FastEnd, route: CompiledRoute, observers: tuple[Observer, ...], done: ReplyTo) -> bool:
        """Start the request, or say False having done nothing: the coroutine path takes it.

        A ``ProxyError`` raised here is the request's answer (validation, ``ClusterOverflow``,
        ``CircuitOpen``), raised before anything reached the partner; otherwise
        ``end.finish_fast`` is called exactly once, later, through the request's ``FastCall``.
        """
        if self.validate is not None:
            self.validate.check(ex)
        if ex.method in BODY_METHODS:
            return False  # the forwarder would read a body: that may wait
        if not self.forwarder.can_start_now():
            return False
        token: Token | None = None
        credentials = self.credentials
        if credentials is not None:
            token = credentials.provider.peek()
            if token is None:
                return False
            credentials.attach(ex, token)
        self.forwarder.start(ex, FastCall(self, ex, token, end, route, observers, done))
        return True


class FastCall:
    """One request on the callback path, from the listener's hand-off to its reply.

    Why an object: what the answer needs (the route's filters and the token the request carried;
    the listener's route, observers and reply callback) used to be bound into two partials per
    request, one by ``Listener.handle`` and one by ``FastRoute.run``, and the answer went through
    both. This is built once per request, is the forwarder's ``Done``, and runs the route's answer
    filters (``VerifyAnswer.check``, ``RewriteErrors.record``, ``InjectCredentials.rejected``)
    before handing the outcome to the listener's ``finish_fast``: in the chain's order, as before.
    """

    __slots__ = ("fast", "ex", "token", "end", "route", "observers", "done")

    def __init__(
        self, fast: FastRoute, ex: Exchange, token: Token | None,
        end: FastEnd, route: CompiledRoute, observers: tuple[Observer, ...], done: ReplyTo,
    ) -> None:
        self.fast = fast
        self.ex = ex
        self.token = token  # the token attached, when the route has credentials
        self.end = end
        self.route = route
        self.observers = observers  # the request's runtime's, taken when it started
        self.done = done  # the server's reply callback

    def __call__(self, response: UpstreamResponse | None, error: BaseException | None) -> None:
        """The forwarder's outcome: through the route's answer filters, then the listener's reply."""
        if error is None:
            assert response is not None
            fast = self.fast
            ex = self.ex
            try:
                if fast.verify is not None:  # innermost: a 200 without a valid signature never reaches the app
                    fast.verify.check(ex, response)
                if fast.rewrite is not None:
                    fast.rewrite.record(ex, response)
                credentials = fast.credentials
                token = self.token
                if credentials is not None and token is not None:
                    verdict = credentials.rejected(response)
                    if verdict is not None:
                        recovery = credentials.recover(ex, token, verdict, response, fast._inner)
                        task = asyncio.get_running_loop().create_task(recovery)
                        task.add_done_callback(partial(report_to, self.reply))
                        return
            except BaseException as exc:  # handed on like a chain's exception: the listener renders it
                response, error = None, exc
        self.end.finish_fast(self, response, error)

    def reply(self, response: UpstreamResponse | None, error: BaseException | None) -> None:
        """The outcome as it is (after the filters, or a token renewal's): the listener renders it."""
        self.end.finish_fast(self, response, error)

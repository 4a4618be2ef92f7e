"""The data listener on asyncio Protocols and llhttp (``httptools``, strict): the sidecar's own
HTTP/1.1 server, because aiohttp's server alone cost more CPU per request than everything else the
sidecar does (bench/). Modules, one concern each:

- ``limits``     the safety limits and timeouts (``H1Limits``: routes.yaml's ``listener:`` block), one frozen value;
- ``ticker``     one coarse clock per server: timeouts and the ``Date`` header, no timer per request;
- ``downstream`` ``H1Request``: one parsed request as the core's ``Downstream`` (bounded body);
- ``response``   ``Reply`` -> bytes on the wire, and the parser-level plain answers (400/408/431);
- ``protocol``   ``H1Protocol``: one connection (parse, pipeline in order, back-pressure, timeouts);
- ``server``     ``H1Server``: bind, accept, drain, close.
"""

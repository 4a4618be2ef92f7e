"""REDIS_URL parsing as a plain unit: every shape, and the password never in a message or a repr."""

from __future__ import annotations

import pytest

from proxy.config.redis_url import RedisUrlError, parse_redis_url
from proxy.oauth.redis_client import failure_reason

PASSWORD = "p@ss:w/rd?#x"  # URL-special characters, percent-encoded in the URLs below
ENCODED = "p%40ss%3Aw%2Frd%3F%23x"


def test_single_with_acl_user_and_tls_files() -> None:
    t = parse_redis_url(f"rediss://pp:{ENCODED}@cache.example:6380/2?ssl_ca_certs=/etc/hostname", check_files=True)
    assert (t.mode, t.tls, t.nodes, t.db, t.username, t.password) == ("single", True, (("cache.example", 6380),), 2, "pp", PASSWORD)
    assert t.ssl_ca_certs == "/etc/hostname"
    assert PASSWORD not in repr(t) and ENCODED not in repr(t)
    assert t.describe() == "rediss://pp@cache.example:6380"


def test_sentinel_and_cluster_shapes() -> None:
    s = parse_redis_url(f"redis+sentinel://pp:{ENCODED}@s1,s2:26380,[::1]:26381/mymaster/3?sentinel_password=spw")
    assert s.mode == "sentinel" and s.service == "mymaster" and s.db == 3
    assert s.nodes == (("s1", 26379), ("s2", 26380), ("::1", 26381))
    assert s.sentinel_password == "spw" and "spw" not in repr(s)
    c = parse_redis_url("rediss+cluster://pp:pw@n1:7000,n2:7001/")
    assert c.mode == "cluster" and c.tls and c.nodes == (("n1", 7000), ("n2", 7001)) and c.db == 0


@pytest.mark.parametrize(
    "url",
    [
        f"http://pp:{ENCODED}@h/0",
        f"redis+sentinel://pp:{ENCODED}@h:26379",
        f"redis+sentinel://pp:{ENCODED}@h:26379/svc/0/extra",
        f"redis+cluster://pp:{ENCODED}@h:7000/1",
        f"redis://pp:{ENCODED}@h:99999/0",
        f"redis://pp:{ENCODED}@h/zero",
        f"redis://pp:{ENCODED}@h/0?ssl_ca_certs=/etc/hostname",
        f"rediss://pp:{ENCODED}@h/0?ssl_keyfile=/etc/hostname",
        f"rediss://pp:{ENCODED}@h/0?ssl_ca_certs=",
        f"rediss://pp:{ENCODED}@h/0?ssl_ca_certs=/a&ssl_ca_certs=/b",
        f"redis://pp:{ENCODED}@/0",
        f"redis://pp:{ENCODED}@h,,g/0",
        f"unix://pp:{ENCODED}@host/sock",
        f"redis://pp:{ENCODED}@h/0#frag",
        f"redis://pp:{PASSWORD}/0",  # forgot @host: the "port" is the password
        "redis://pp:hunter2/0",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(RedisUrlError) as info:
        parse_redis_url(url)
    text = str(info.value)
    assert text
    for secret in (PASSWORD, ENCODED, "hunter2", "p@ss", "w/rd"):
        assert secret not in text, text


def test_failure_reasons_are_fixed_phrases() -> None:
    import ssl

    from redis import exceptions as rx
    from redis.asyncio.sentinel import MasterNotFoundError

    assert failure_reason(rx.AuthenticationError("WRONGPASS secret")).startswith("authentication rejected")
    assert failure_reason(rx.NoPermissionError("NOPERM")).startswith("the ACL user may not run")
    tls = rx.ConnectionError("Error connecting")
    tls.__context__ = ssl.SSLCertVerificationError("certificate verify failed")
    assert failure_reason(tls).startswith("TLS handshake failed")
    assert failure_reason(MasterNotFoundError("No master found")).startswith("the sentinels know no healthy master")
    assert failure_reason(rx.ClusterDownError("CLUSTERDOWN")).startswith("the cluster does not serve")
    assert failure_reason(rx.TimeoutError("t")) == "timeout"
    assert failure_reason(rx.ConnectionError("refused")) == "connection failed"

"""Tokopedia's own Python SDK (``py-sat-sdk``, module ``py_sat``) against ``partner-proxy sandbox``.

The SDK is an independent client written by the partner: if it can fetch a token, sign a
checkout the sandbox accepts, and verify the sandbox's status signatures, the sandbox speaks
the partner's protocol and not just our own idea of it. The SDK is synchronous (requests), so
the sandbox runs as a real subprocess on a free loopback port and these tests are plain sync
functions: nothing here blocks an event loop.

SDK quirks met here (``partner/tokopedia-b2b-checkout.md`` section 6), each handled where noted:

1. The token is fetched in ``SATClient.__init__`` and never refreshed: one client per test
   module is enough, and the sandbox must be up before the client is built.
2. requests-oauthlib refuses an ``http://`` token URL unless ``OAUTHLIB_INSECURE_TRANSPORT=1``.
3. No timeout on any request (``with_timeout`` is stored, never used): pytest-timeout guards.
4. ``list_product`` maps ``name``/``sales_price`` while the wire has ``product_name``/``price``,
   so both come back empty; and ``ProductStatus`` has no 3, so the *full* list (which holds a
   status-3 product) raises ``GeneralException``. Only filtered lists of status 1/2 parse.
5. Checkout bodies are ``json.dumps`` defaults (spaced) with ``"amount": 0.0`` when unset, and
   the signature goes in a lower-case ``signature`` header: the sandbox accepts all three.
6. ``check_status`` verifies with salt = *exactly* max (pycryptodome ``salt_bytes=k-34``) over
   ``response.text``; a salt-32 signature would fail. Any verification failure is re-raised as
   ``GeneralException`` and the order data is lost.
7. Any 2xx is success; 4xx JSON:API errors come back as ``ErrorResponse`` values, not raised.
8. ``InquiryResponse.fields`` is typed as a non-optional list, but the partner sends
   ``"fields": null`` when none were given: dataclasses-json warns (RuntimeWarning) and keeps None.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.signing import generate_key_pair
from tests.helpers import ROOT
from tests.redis_server import free_port

py_sat = pytest.importorskip("py_sat")
from py_sat import SATClient, SATClientConfig  # noqa: E402
from py_sat.exceptions import GeneralException  # noqa: E402
from py_sat.models import ErrorResponse, InquiryRequest, OrderRequest  # noqa: E402

pytestmark = pytest.mark.timeout(60)  # quirk 3: the SDK itself never times out

SETTLE_AFTER = 0.3


@dataclass
class Sandbox:
    url: str
    account_key: Path
    sandbox_pub: Path
    other_key: Path


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    keys = tmp_path_factory.mktemp("sdk-keys")
    account = generate_key_pair(keys, "account")
    own = generate_key_pair(keys, "sandbox")
    stranger = generate_key_pair(keys, "stranger")
    port = free_port()
    log = (keys / "sandbox.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "sandbox", "--host", "127.0.0.1", "--port", str(port),
         "--public-key", str(account.public), "--signing-key", str(own.private), "--settle-after", str(SETTLE_AFTER)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sandbox exited {proc.returncode}: {(keys / 'sandbox.log').read_text()}")
            try:
                with urllib.request.urlopen(url + "/ping", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield Sandbox(url, account.private, own.public, stranger.private)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def sdk_client(sandbox: Sandbox, private_key: Path | None = None) -> SATClient:
    config = (
        SATClientConfig(
            client_id="sandbox-client",
            client_secret="sandbox-secret",
            private_key=(private_key or sandbox.account_key).read_text(),
            sat_public_key=sandbox.sandbox_pub.read_text(),
        )
        .with_sat_base_url(sandbox.url)  # paths are concatenated: no trailing slash
        .with_access_token_base_url(sandbox.url + "/token")  # the *full* token URL
    )
    return SATClient(config)


@pytest.fixture(scope="module")
def client(sandbox: Sandbox) -> Iterator[SATClient]:
    mp = pytest.MonkeyPatch()
    mp.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # quirk 2
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        mp.delenv(var, raising=False)  # the token fetch goes through requests' env proxies
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    try:
        yield sdk_client(sandbox)  # quirk 1: the token is fetched right here
    finally:
        mp.undo()


def new_id() -> str:
    return "sdk-" + uuid.uuid4().hex


def test_token_is_fetched_at_construction(client: SATClient) -> None:
    token = client.get_http_client()._access_token
    assert isinstance(token, str) and token.startswith("c:")


def test_ping(client: SATClient) -> None:
    pong = client.ping()
    assert (pong.status, pong.sandbox) == ("ok", True)


def test_account(client: SATClient) -> None:
    account = client.account()
    assert not isinstance(account, ErrorResponse)
    assert int(account.id) == 2203
    assert isinstance(account.saldo, int) and account.saldo > 0


def test_product_list_filtered(client: SATClient) -> None:
    listing = client.list_product("25k-xl")
    assert not isinstance(listing, ErrorResponse) and listing.is_success()
    [product] = listing.products
    assert (product.id, product.is_inquiry) == ("25k-xl", False)
    assert (product.name, product.sales_price) == ("", 0)  # quirk 4: wrong field names in the SDK
    missing = client.list_product("not-exists")
    assert isinstance(missing, ErrorResponse) and missing.get_error_codes() == "P04"


def test_full_product_list_trips_the_sdks_status_enum(client: SATClient) -> None:
    with pytest.raises(GeneralException):  # quirk 4: status 3 is not in ProductStatus
        client.list_product()


@pytest.mark.filterwarnings("ignore:'NoneType' object value of non-optional type fields:RuntimeWarning")  # quirk 8
def test_inquiry(client: SATClient) -> None:
    bill = client.inquiry(InquiryRequest(product_code="pln-postpaid", client_number="2121212"))
    assert not isinstance(bill, ErrorResponse)
    assert bill.id == "2121212" and bill.product_code == "pln-postpaid"
    assert bill.admin_fee == 2500 and bill.sales_price == bill.base_price + bill.admin_fee
    assert bill.client_name and bill.inquiry_result
    unknown = client.inquiry(InquiryRequest(product_code="not-exists", client_number="2121212"))
    assert isinstance(unknown, ErrorResponse) and unknown.get_error_codes() == "P04"


def test_checkout_then_status_until_success(client: SATClient) -> None:
    before = client.account().saldo
    request_id = new_id()
    order = client.checkout(OrderRequest(id=request_id, product_code="25k-xl", client_number="081234567890"))
    assert not isinstance(order, ErrorResponse), order.get_error_messages()
    assert (order.id, order.status, order.sales_price) == (request_id, "Pending", 24913)
    assert client.account().saldo == before - 24913
    for _ in range(100):  # bounded poll; check_status raises unless the signature verifies
        detail = client.check_status(request_id)
        assert not isinstance(detail, ErrorResponse)
        if detail.status != "Pending":
            break
        time.sleep(0.05)
    assert detail.status == "Success"
    assert detail.fulfilled_at is not None and detail.serial_number
    assert detail.get_raw_response().headers["Signature"]


@pytest.mark.filterwarnings("ignore:'NoneType' object value of non-optional type fields:RuntimeWarning")  # quirk 8
def test_checkout_of_an_inquired_bill(client: SATClient) -> None:
    bill = client.inquiry(InquiryRequest(product_code="pln-postpaid", client_number="5550001"))
    order = client.checkout(OrderRequest(id=new_id(), product_code="pln-postpaid", client_number="5550001", amount=bill.sales_price))
    assert not isinstance(order, ErrorResponse), order.get_error_messages()
    assert order.sales_price == bill.sales_price


def test_reused_request_id_is_p03(client: SATClient) -> None:
    request_id = new_id()
    first = client.checkout(OrderRequest(id=request_id, product_code="25k-xl", client_number="081234567890"))
    assert not isinstance(first, ErrorResponse)
    again = client.checkout(OrderRequest(id=request_id, product_code="25k-xl", client_number="081234567890"))
    assert isinstance(again, ErrorResponse)
    assert again.get_error_codes() == "P03" and again.get_raw_response().status_code == 400


def test_unknown_order_is_p02(client: SATClient) -> None:
    answer = client.check_status(new_id())
    assert isinstance(answer, ErrorResponse) and answer.get_error_codes() == "P02"


@pytest.mark.parametrize("fault", ["sign-missing", "sign-bad"])
def test_sdk_rejects_a_status_answer_whose_signature_is_spoiled(client: SATClient, fault: str) -> None:
    request_id = new_id()
    order = client.checkout(OrderRequest(id=request_id, product_code=fault, client_number="081234567890"))
    assert not isinstance(order, ErrorResponse)
    with pytest.raises(GeneralException):  # quirk 6: UnauthenticatedException, re-raised
        client.check_status(request_id)


def test_checkout_signed_with_another_key_is_refused(sandbox: Sandbox, client: SATClient) -> None:
    stranger = sdk_client(sandbox, sandbox.other_key)  # client fixture has set the env up
    answer = stranger.checkout(OrderRequest(id=new_id(), product_code="25k-xl", client_number="081234567890"))
    assert isinstance(answer, ErrorResponse) and answer.get_error_codes() == "P09"

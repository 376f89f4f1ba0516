"""Which address a rate limit counts: X-Forwarded-For is believed only from trusted proxies."""

from services.http.ratelimit import client_ip, limits_from, trusted_networks

TRUSTED = trusted_networks("127.0.0.1,::1,10.0.0.0/8")


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    assert client_ip("203.0.113.9", ["1.2.3.4"], TRUSTED) == "203.0.113.9"


def test_behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() -> None:
    # the client forged "1.2.3.4"; nginx (10.0.0.2) appended the real peer; the gateway
    # (127.0.0.1) appended nginx
    assert client_ip("127.0.0.1", ["1.2.3.4, 203.0.113.9, 10.0.0.2"], TRUSTED) == "203.0.113.9"
    assert client_ip("127.0.0.1", ["1.2.3.4", "203.0.113.9"], TRUSTED) == "203.0.113.9"


def test_all_trusted_is_the_peer_and_no_peer_is_one_bucket() -> None:
    assert client_ip("127.0.0.1", [], TRUSTED) == "127.0.0.1"
    assert client_ip("127.0.0.1", ["10.1.1.1"], TRUSTED) == "127.0.0.1"
    assert client_ip(None, ["1.2.3.4"], TRUSTED) == "unknown"


def test_limit_strings() -> None:
    assert [str(item) for item in limits_from("2/second;30/minute")] == [
        "2 per 1 second", "30 per 1 minute"]
    assert limits_from("") == []

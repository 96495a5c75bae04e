"""sipyard.nat: which bindings are behind NAT, and the alias that makes a Contact routable."""

from __future__ import annotations

from sipyard.nat import Flow, add_alias, alias_contact_value, behind_nat, is_private, split_alias


def test_private_shared_link_local() -> None:
    assert is_private("10.1.2.3") and is_private("172.20.0.1") and is_private("192.168.1.9")
    assert is_private("100.64.0.1") and is_private("169.254.3.4") and is_private("[fe80::1]")
    assert not is_private("192.0.2.1") and not is_private("127.0.0.1")
    assert not is_private("pbx.example")


def test_behind_nat() -> None:
    assert behind_nat("sip:10@192.168.1.5:5060", "203.0.113.7")
    assert not behind_nat("sip:10@192.168.1.5:5060", "192.168.1.5")  # same LAN as us
    assert not behind_nat("sip:10@198.51.100.9", "203.0.113.7")  # registered on behalf
    assert behind_nat("sip:10@198.51.100.9", "203.0.113.7", outbound=True)  # RFC 5626


def test_alias_round_trip() -> None:
    flow = Flow("tcp", "203.0.113.7", 40123)
    uri = add_alias("sip:10@192.168.1.5:5060;transport=tcp?X=1", flow)
    assert uri == "sip:10@192.168.1.5:5060;transport=tcp;alias=203.0.113.7~40123~2?X=1"
    assert split_alias(uri) == ("sip:10@192.168.1.5:5060;transport=tcp?X=1", flow)
    assert split_alias("sip:10@192.168.1.5;alias=bogus") == ("sip:10@192.168.1.5;alias=bogus",
                                                              None)
    value = alias_contact_value('"Ten" <sip:10@10.0.0.2:5060>;expires=60',
                                Flow("udp", "203.0.113.7", 5062))
    assert value == '"Ten" <sip:10@10.0.0.2:5060;alias=203.0.113.7~5062~1>;expires=60'
    assert alias_contact_value("<sip:10@198.51.100.1>", Flow("udp", "203.0.113.7", 1)) is None

"""Flow tokens in Path values (sipyard.flowtoken): what another host may route by."""

from __future__ import annotations

import pytest

from sipyard.flowtoken import EdgePath, FlowToken, FlowTokens, flow_bound, path_value
from sipyard.messaging import Sender
from sipyard.nat import Flow
from sipyard.proxy.addresses import Interface, LocalAddresses
from sipyard.sip.source import Listen
from sipyard.transport import Transports

KEY = b"k" * 32
IFACE = Interface("192.0.2.1", 5060, "udp")


def tokens(secret: bytes = KEY) -> FlowTokens:
    return FlowTokens(lambda: secret)


@pytest.mark.parametrize("token", [
    FlowToken(Flow("tcp", "203.0.113.7", 40123), (1 << 40) | 7, False),
    FlowToken(Flow("udp", "198.51.100.2", 5060), None, True),
    FlowToken(Flow("udp", "2001:db8::1", 1), None, False),
])
def test_round_trip_and_only_for_the_same_key(token: FlowToken) -> None:
    text = tokens().encode(token)
    assert text.isascii() and text.replace("-", "").replace("_", "").isalnum()  # SIP user part
    assert tokens().decode(text) == token
    assert tokens(b"x" * 32).decode(text) is None  # another cluster's secret


def test_tampering_and_garbage_are_refused() -> None:
    t = tokens()
    text = t.encode(FlowToken(Flow("udp", "203.0.113.7", 40000), None, True))
    for bad in (text[:-1] + ("A" if text[-1] != "A" else "B"), text[1:], "", "sip", text + "A",
                "%" * 36, "ab" * 26):
        assert t.decode(bad) is None, bad
    with pytest.raises(ValueError):
        t.encode(FlowToken(Flow("sctp", "203.0.113.7", 1), None, True))


def test_the_key_follows_the_secret() -> None:
    """The secret becomes the cluster's after start-up: tokens minted since verify."""
    secret = [KEY]
    t = FlowTokens(lambda: secret[0])
    old = t.encode(FlowToken(Flow("udp", "203.0.113.7", 40000), None, True))
    secret[0] = b"c" * 32
    assert t.decode(old) is None
    assert t.decode(t.encode(FlowToken(Flow("udp", "203.0.113.7", 1), None, True))) is not None


def test_which_bindings_are_reached_through_their_flow() -> None:
    assert flow_bound("sip:a@10.0.0.5:5060", "203.0.113.7", "udp")  # behind NAT
    assert flow_bound("sip:a@192.0.2.5:5060", "192.0.2.5", "tcp")  # a connection
    assert flow_bound("sip:a@192.0.2.5", "192.0.2.5", "udp", outbound=True)
    assert not flow_bound("sip:a@192.0.2.5:5060", "192.0.2.5", "udp")  # reached at its Contact


def test_edge_path_names_this_host_and_the_flow() -> None:
    local = LocalAddresses([IFACE])
    edge = EdgePath(tokens(), lambda near: IFACE, local.is_our_uri)
    make = edge.for_register(Flow("tcp", "192.0.2.5", 40001), 9, ("192.0.2.1", 5060))
    value = make("sip:a@192.0.2.5:5060;transport=tcp", False)
    assert value is not None and value.endswith("@192.0.2.1:5060;lr;ob>")
    ours, token = edge.own(value)
    assert ours and token == FlowToken(Flow("tcp", "192.0.2.5", 40001), 9, True)
    nat = edge.for_register(Flow("udp", "203.0.113.7", 41000), None, ("192.0.2.1", 5060))
    value = nat("sip:a@10.0.0.5", False)
    assert value is not None
    ours, token = edge.own(value)
    assert ours and token is not None and not token.fallback  # behind NAT: 430 when gone
    direct = edge.for_register(Flow("udp", "192.0.2.5", 5060), None, ("192.0.2.1", 5060))
    assert direct("sip:a@192.0.2.5:5060", False) is None
    # another host's Path: not ours; ours without a token of ours: ours, no flow
    assert edge.own("<sip:x@192.0.2.2:5060;lr>") == (False, None)
    assert edge.own("<sip:forged@192.0.2.1:5060;lr;ob>") == (True, None)
    assert edge.own("<sip:192.0.2.1:5060;lr>") == (True, None)
    assert path_value(Interface("192.0.2.1", 5070, "tcp"), "T") == (
        "<sip:T@192.0.2.1:5070;lr;ob;transport=tcp>")


def test_server_requests_follow_the_path_to_the_host_holding_the_flow() -> None:
    """MESSAGE, NOTIFY, pick-up SUBSCRIBE, NAT pings: our own Path value goes, another
    host's (or an edge proxy's) is the first hop with the Path as Route set."""
    edge = EdgePath(tokens(), lambda near: IFACE, LocalAddresses([IFACE]).is_our_uri)
    ours = edge.for_register(Flow("udp", "203.0.113.7", 41000), None, ("192.0.2.1", 5060))(
        "sip:a@10.0.0.5", False)
    theirs = path_value(Interface("192.0.2.2", 5060), tokens().encode(
        FlowToken(Flow("udp", "203.0.113.8", 42000), None, False)))
    assert ours is not None
    transports = Transports(lambda data, src: None)  # never started: only its bound list
    transports.bound.append(Listen("udp", "192.0.2.1", 5060))
    sender = Sender(transports, None, None, None)  # type: ignore[arg-type]
    sender.edge = edge
    assert sender.route((ours, "<sip:edge.example.com;lr>")) == (
        None, ("<sip:edge.example.com;lr>",))
    hop, routes = sender.route((theirs,))
    assert hop is not None and (hop.transport, hop.ip, hop.port) == ("udp", "192.0.2.2", 5060)
    assert routes == (theirs,)
    assert edge.elsewhere(theirs) and not edge.elsewhere(ours)
    assert not edge.elsewhere("<sip:edge.example.com;lr>")  # a proxy, not a host of ours
    assert sender.route(()) == (None, ())

"""The suite's scripted agent itself (cpoa.testing.agent), over a real loopback socket."""

from __future__ import annotations

import socket
import urllib.parse

from cpoa.testing.agent import ASF_UI, ScriptedAgent


def test_scripted_agent__a_request_cut_off_mid_body_is_not_recorded():
    """A client killed while sending its body (a worker SIGKILLed mid-request) made no request:
    the agent records nothing and answers nothing (it recorded a UI event of None, which the
    scale-out test's kill then tripped on)."""
    agent = ScriptedAgent()
    try:
        url = urllib.parse.urlsplit(agent.url)
        with socket.create_connection((url.hostname, url.port), timeout=5) as client:
            client.sendall(f"POST {ASF_UI} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                           f"\r\nContent-Length: 100\r\n\r\n".encode() + b'{"event_id": ')
            client.shutdown(socket.SHUT_WR)
            assert client.recv(4096) == b""  # closed without an answer
        assert agent.ui_events == [] and agent.requests == []
    finally:
        agent.close()

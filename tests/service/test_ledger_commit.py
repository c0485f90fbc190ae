"""A worker's finished work and an unreachable coordinator (umbra.services.ledger_client), over real gRPC: the
charge's commit is retried until the coordinator is back, and a coordinator that stays away ends the work
Interrupted (so the same request_id runs it again), never failed, with the charge still reserved (counted)."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from support import create_tenant, start_coordinator
from umbra.client.channel import open_channel
from umbra.coordinator.v1 import ledger_service_pb2 as ls
from umbra.coordinator.v1 import ledger_service_pb2_grpc
from umbra.privacy.mechanisms import Cost
from umbra.runtime.errors import Interrupted
from umbra.runtime.server import create_server
from umbra.services.ledger_client import LedgerClient
from umbra.services.registry import spec

pytestmark = pytest.mark.timeout(120)
COST = Cost(0.5, 0.0, "randomized_response", "attribute gender")


def test_a_commit_waits_for_the_coordinator_and_one_that_never_comes_back_interrupts(tmp_path):
    running = start_coordinator(tmp_path)
    target = f"127.0.0.1:{running.port}"
    key = create_tenant(target, "acme", budget=(10.0, 1e-5))
    config = dataclasses.replace(running.runtime.config, port=running.port)
    client = LedgerClient(target, config.service_token, commit_patience=60.0)
    client.reserve("acme", "faces", COST, request_id="work-1", spent_by="test")

    # the coordinator stops as the work finishes, and is back two seconds later: the commit goes through
    restarted: list = []
    with client.settles("acme", "work-1"):
        running.stop(grace=0)
        threading.Timer(2.0, lambda: restarted.append(create_server(config, spec("coordinator")).start())).start()
    back = restarted[0]
    stub = ledger_service_pb2_grpc.LedgerServiceStub(open_channel(target, key))
    balance = stub.GetPrivacyBalance(ls.GetPrivacyBalanceRequest(), timeout=30)
    assert balance.committed_entries == 1 and balance.reserved_entries == 0

    # the coordinator stops for good: after its patience the work ends Interrupted, the charge stays reserved
    client.reserve("acme", "faces", COST, request_id="work-2", spent_by="test")
    back.stop(grace=0)
    impatient = LedgerClient(target, config.service_token, commit_patience=1.5)
    began = time.monotonic()
    with pytest.raises(Interrupted, match="the same request_id"):
        with impatient.settles("acme", "work-2"):
            pass
    assert 1.0 <= time.monotonic() - began < 30
    again = create_server(config, spec("coordinator")).start()
    try:
        balance = stub.GetPrivacyBalance(ls.GetPrivacyBalanceRequest(), timeout=30)
        assert balance.committed_entries == 1 and balance.reserved_entries == 1
    finally:
        again.stop(grace=0)

"""Migrations 0008's and 0009's beats, run by PostgreSQL through PostgREST and the importer's own client, and
an import that beats on its key (transforms/clients/rate_peers.py)."""

from __future__ import annotations

import pytest

from tests.importer import run_import
from transforms.clients.rate_peers import BEAT_FUNCTION, RatePeers, key_digest
from transforms.clients.resources import BEAT_RETRY
from transforms.clients.supabase import SupabaseClient
from transforms.core.ratelimit import AdaptiveRateLimiter

DATASET = "eeeeeeee-0000-4000-8000-0000000000e8"


@pytest.fixture
def client(clean_supabase):
    sb = SupabaseClient(clean_supabase.url, clean_supabase.service_role_key, retry=BEAT_RETRY)
    try:
        yield sb
    finally:
        sb.close()


def beat(client: SupabaseClient, peer: str, sent: float, accepted: float, key: str = "k1") -> dict:
    return client.rpc(BEAT_FUNCTION, {"p_key": key, "p_peer": peer, "p_sent": sent, "p_accepted": accepted,
                                      "p_refused": sent - accepted, "p_live_s": 6.0})


def turn_beat(client: SupabaseClient, peer: str, sent: float, turn: bool) -> dict:
    return client.rpc(BEAT_FUNCTION, {"p_key": "k1", "p_peer": peer, "p_sent": sent, "p_accepted": sent,
                                      "p_refused": 0.0, "p_live_s": 6.0, "p_turn": turn})


def test_the_beat_counts_the_processes_that_send_on_the_key_and_what_it_answered_them(client):
    assert client.rpc("od_import_schema_version", {}) == 9
    assert beat(client, "a", 10.0, 9.0) == {"peers": 1, "accepted": 9.0, "refused": 1.0}
    assert beat(client, "b", 20.0, 18.0) == {"peers": 2, "accepted": 27.0, "refused": 3.0}
    assert beat(client, "c", 5.0, 5.0, key="k2") == {"peers": 1, "accepted": 5.0, "refused": 0.0}  # another key
    assert beat(client, "a", 12.0, 12.0) == {"peers": 2, "accepted": 30.0, "refused": 2.0}  # a beat replaces the last
    assert beat(client, "b", 0.0, 0.0) == {"peers": 2, "accepted": 12.0, "refused": 0.0}  # b left: counts only itself
    assert beat(client, "a", 12.0, 12.0) == {"peers": 1, "accepted": 12.0, "refused": 0.0}


def test_the_processes_that_ask_take_turns_in_the_order_of_their_names(client):
    """0009's beat; 0008's (above, as older importers call it) still answers without turns."""
    assert turn_beat(client, "b", 10.0, True) == {"peers": 1, "accepted": 10.0, "refused": 0.0, "turns": 1, "rank": 0}
    answer = turn_beat(client, "a", 8.0, True)
    assert (answer["peers"], answer["turns"], answer["rank"]) == (2, 2, 0)
    assert turn_beat(client, "b", 10.0, True)["rank"] == 1  # "a" sorts first
    answer = turn_beat(client, "c", 30.0, False)  # sends, asks for no turn: counted, gets none
    assert (answer["peers"], answer["turns"], answer["rank"]) == (3, 2, None)
    answer = turn_beat(client, "a", 0.0, True)  # sent nothing: no peer, no turn
    assert (answer["peers"], answer["turns"], answer["rank"]) == (3, 1, None)
    assert turn_beat(client, "b", 10.0, True)["rank"] == 0
    assert beat(client, "b", 10.0, 10.0) == {"peers": 2, "accepted": 40.0, "refused": 0.0}  # 0008's beat


def test_a_process_that_stopped_beating_stops_counting(client, clean_supabase):
    beat(client, "gone", 30.0, 30.0)
    clean_supabase.execute_sql("update od_import_rate_peers set seen_at = now() - interval '7 seconds'")
    assert beat(client, "here", 10.0, 10.0) == {"peers": 1, "accepted": 10.0, "refused": 0.0}


def test_the_importers_beats_reach_the_limiter_through_the_real_client(client):
    beat(client, "other-process", 40.0, 40.0, key=key_digest("rf_key"))
    limiter = AdaptiveRateLimiter(10.0, job_rate=40.0, start_grace=0.0)
    peers = RatePeers(limiter, lambda params: client.rpc(BEAT_FUNCTION, params, retry=BEAT_RETRY), key_digest("rf_key"))
    peers.beat_once()
    peers.beat_once()  # a part grows when two beats running agree
    assert limiter.peers == 2 and limiter.rate == pytest.approx(20.0)


def test_an_import_beats_on_a_digest_of_its_key_and_leaves_its_part_free_at_the_end(
        roboflow_emulator, clean_supabase, tmp_path, monkeypatch):
    clean_supabase.execute_sql(f"insert into od_datasets (id, name) values ('{DATASET}', 'peers')")
    emu = roboflow_emulator(image_count=6, seed=18, image_kb_max=6)
    code, summary, _ = run_import(emu, clean_supabase, tmp_path, DATASET, "--roboflow_rate_limit", "50",
                                  monkeypatch=monkeypatch)
    assert code == 0 and summary["imported"] == 6
    rows = clean_supabase.sql("select key_digest, sent from od_import_rate_peers")
    assert rows and {r["key_digest"] for r in rows} == {key_digest(emu.config.api_key)}
    assert all(r["sent"] == 0 for r in rows)  # each process said it left

"""Every DoFn of a worker process shares one client per kind and one pool per step, and the last
DoFn to tear down closes them: the Roboflow rate limit is per process, and an importer called again
and again in the platform's backend must not keep every earlier import's connections."""

import pickle
import threading

from transforms.batch_step import BatchStepFn
from transforms.clients.resources import RoboflowConfig, SupabaseConfig, roboflow_client, supabase_client
from transforms.core.records import ImportContext
from transforms.core.secrets import SecretRef
from transforms.core.shared import ProcessShared
from transforms.fetch_details import FetchDetailsFn
from transforms.upload_images import UploadImagesFn

ROBOFLOW = RoboflowConfig("http://127.0.0.1:9", SecretRef(env_var="ROBOFLOW_API_KEY"), rate_limit=10.0)
SUPABASE = SupabaseConfig("http://127.0.0.1:9", SecretRef(env_var="SUPABASE_SERVICE_ROLE_KEY"))
CONTEXT = ImportContext("dataset", "ws", "project", 1, "bucket", {})


def test_each_kind_keeps_its_one_client_when_the_other_kind_is_leased_in_between(monkeypatch):
    monkeypatch.setenv("ROBOFLOW_API_KEY", "rf_resources_test_key")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sb_resources_test_key")
    # The order of DoFn setup() calls in one fused stage: details, upload (both kinds), write rows.
    held = [roboflow_client(ROBOFLOW), roboflow_client(ROBOFLOW), supabase_client(SUPABASE),
            supabase_client(SUPABASE), roboflow_client(ROBOFLOW), supabase_client(SUPABASE)]
    try:
        assert held[0].value is held[1].value is held[4].value
        assert held[2].value is held[3].value is held[5].value
        assert held[0].value.limiter is held[4].value.limiter
    finally:
        for lease in held:
            lease.release()


def test_another_key_in_the_environment_gets_another_client(monkeypatch):
    monkeypatch.setenv("ROBOFLOW_API_KEY", "rf_first_key")
    first = roboflow_client(ROBOFLOW)
    monkeypatch.setenv("ROBOFLOW_API_KEY", "rf_second_key")
    second = roboflow_client(ROBOFLOW)
    try:
        assert first.value is not second.value
    finally:
        first.release()
        second.release()


def test_the_last_release_closes_once_and_a_new_lease_makes_a_new_object():
    closed = []
    shared = ProcessShared()
    leases = [shared.lease("k", object, closed.append) for _ in range(3)]
    leases[0].release()
    leases[0].release()  # twice is harmless: it must not count as another holder's release
    leases[1].release()
    assert closed == [] and shared.leases("k") == 1
    leases[2].release()
    assert closed == [leases[0].value] and shared.leases("k") == 0
    again = shared.lease("k", object, closed.append)
    assert again.value is not leases[0].value


def test_every_copy_of_a_step_shares_one_pool_per_process_and_steps_keep_their_own():
    """Beam unpickles a DoFn per bundle processor; each copy must reuse the process's pool of that step."""
    made = {"details": FetchDetailsFn(ROBOFLOW, CONTEXT, 3),
            "upload": UploadImagesFn(ROBOFLOW, SUPABASE, CONTEXT, 3)}
    before = threading.active_count()
    details, uploads = [], []
    for _ in range(6):  # one fused stage per bundle processor: details, then upload, set up in turn
        for step, fns in (("details", details), ("upload", uploads)):
            fn = pickle.loads(pickle.dumps(made[step]))
            BatchStepFn.setup(fn)  # the pool only; the steps' own setup() adds their clients
            fns.append(fn)
    assert len({id(fn._pool) for fn in details}) == 1
    assert len({id(fn._pool) for fn in uploads}) == 1
    assert details[0]._pool is not uploads[0]._pool
    for fn in details + uploads:  # every copy busy at once: still only the two pools' threads
        for _ in range(3):
            fn._pool.submit(threading.Event().wait, 0.2)
    assert threading.active_count() - before <= 2 * 3 * 4
    pool = details[0]._pool
    for fn in details + uploads:
        fn.teardown()
    assert pool._shutdown


def test_teardown_closes_the_clients_setup_leased(monkeypatch):
    monkeypatch.setenv("ROBOFLOW_API_KEY", "rf_teardown_key")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sb_teardown_key")
    fns = [pickle.loads(pickle.dumps(UploadImagesFn(ROBOFLOW, SUPABASE, CONTEXT, 2))) for _ in range(2)]
    for fn in fns:
        fn.setup()
    roboflow, supabase = fns[0]._roboflow, fns[0]._supabase
    assert fns[1]._roboflow is roboflow and fns[1]._supabase is supabase
    closed = []
    monkeypatch.setattr(type(roboflow), "close", lambda self: closed.append("roboflow"))
    monkeypatch.setattr(type(supabase), "close", lambda self: closed.append("supabase"))
    fns[0].teardown()
    assert closed == []
    fns[1].teardown()
    assert sorted(closed) == ["roboflow", "supabase"]

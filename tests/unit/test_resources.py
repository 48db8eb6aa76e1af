"""Every DoFn of a worker process must share one client per kind: the Roboflow rate limit is per process."""

from transforms.clients.resources import RoboflowConfig, SupabaseConfig, roboflow_client, supabase_client
from transforms.core.secrets import SecretRef


def test_each_kind_keeps_its_one_client_when_the_other_kind_is_acquired_in_between(monkeypatch):
    monkeypatch.setenv("ROBOFLOW_API_KEY", "rf_resources_test_key")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sb_resources_test_key")
    roboflow = RoboflowConfig("http://127.0.0.1:9", SecretRef(env_var="ROBOFLOW_API_KEY"), rate_limit=10.0)
    supabase = SupabaseConfig("http://127.0.0.1:9", SecretRef(env_var="SUPABASE_SERVICE_ROLE_KEY"))
    # The order of DoFn setup() calls in one fused stage: details, upload (both kinds), write rows.
    held = [roboflow_client(roboflow), roboflow_client(roboflow), supabase_client(supabase),
            supabase_client(supabase), roboflow_client(roboflow), supabase_client(supabase)]
    assert held[0] is held[1] is held[4]
    assert held[2] is held[3] is held[5]
    assert held[0].client.limiter is held[4].client.limiter


def test_every_copy_of_a_step_shares_one_pool_per_process_and_steps_keep_their_own():
    """Beam unpickles a DoFn per bundle processor; each copy must reuse the process's pool of that step."""
    import pickle
    import threading

    from transforms.batch_step import BatchStepFn
    from transforms.core.records import ImportContext
    from transforms.fetch_details import FetchDetailsFn
    from transforms.upload_images import UploadImagesFn

    roboflow = RoboflowConfig("http://127.0.0.1:9", SecretRef(env_var="ROBOFLOW_API_KEY"))
    supabase = SupabaseConfig("http://127.0.0.1:9", SecretRef(env_var="SUPABASE_SERVICE_ROLE_KEY"))
    context = ImportContext("dataset", "ws", "project", 1, "bucket", {})
    made = {"details": FetchDetailsFn(roboflow, context, 3), "upload": UploadImagesFn(roboflow, supabase, context, 3)}

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

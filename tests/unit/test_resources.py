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

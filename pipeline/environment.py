"""The environment variables a local run reads its keys and Supabase URL from.

A module of its own, without imports, so that ``pipeline.api`` (imported by the platform's web
service) names them without loading the pipeline (Beam, the clients) into the service's process.
"""

ROBOFLOW_KEY_ENV = "ROBOFLOW_API_KEY"
SUPABASE_KEY_ENV = "SUPABASE_SERVICE_ROLE_KEY"
SUPABASE_URL_ENV = "SUPABASE_URL"

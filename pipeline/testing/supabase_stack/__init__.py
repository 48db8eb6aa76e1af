"""A faithful local Supabase (PostgreSQL 15, PostgREST 12.0.2, a Storage double, a gateway) for tests,
benchmarks and the demo. The official supabase-py client works against it unchanged.

    from pipeline.testing.supabase_stack import LocalSupabase, StackFaults

    with LocalSupabase() as stack:
        client = supabase.create_client(stack.url, stack.service_role_key)
"""

from .faults import StackFaults
from .keys import mint_key
from .postgres import SqlError
from .stack import MIGRATIONS_DIR, LocalSupabase, migration_files

__all__ = ["LocalSupabase", "StackFaults", "SqlError", "MIGRATIONS_DIR", "migration_files", "mint_key"]

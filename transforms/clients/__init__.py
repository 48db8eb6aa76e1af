"""Plain clients for Roboflow and Supabase, made in ``DoFn.setup()``; no Beam inside."""

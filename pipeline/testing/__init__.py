"""Faithful local stand-ins for Roboflow and Supabase, importable like ``apache_beam.testing``."""

"""Roboflow -> Supabase import pipeline: options, composition root and launch."""

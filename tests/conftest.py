"""Shared pytest fixtures: the stand-ins live in tests/fixtures/, one plugin module each."""

pytest_plugins = [
    "tests.fixtures.roboflow",
    "tests.fixtures.supabase",
]

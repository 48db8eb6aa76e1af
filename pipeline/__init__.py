"""Roboflow -> Supabase import pipeline: options, composition root and launch."""

import logging

from transforms.core.redact import HarmlessNoiseFilter

# `import apache_beam` logs "apitools not found" on the root logger before main.py runs; a filter on
# the root logger itself (not a handler) drops it, so a user's stderr holds only the importer's lines.
logging.getLogger().addFilter(HarmlessNoiseFilter())

"""The importer's command line, as a Beam ``PipelineOptions`` subclass.

Beam already owns ``--project`` (the GCP project) and ``--dry_run``, so the Roboflow options carry
a ``roboflow_`` prefix. Keys are never options: options are stored with a Dataflow job and shown in
its console. Locally the keys come from ``ROBOFLOW_API_KEY`` and ``SUPABASE_SERVICE_ROLE_KEY``; on
Dataflow from Secret Manager versions named by ``--*_secret`` options.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.core.ratelimit import AUTO_MAX_IN_FLIGHT, DEFAULT_STALL_TIMEOUT

DEFAULT_API_URL = "https://api.roboflow.com"
DEFAULT_CONCURRENCY = 20  # requests in flight per process to Storage, PostgREST and the CDN without --concurrency


def concurrency_of(opts) -> int:
    """Requests in flight per process for everything but Roboflow's API (which Little's law sizes)."""
    return opts.concurrency or DEFAULT_CONCURRENCY


class ImportOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        rf = parser.add_argument_group("Roboflow source")
        rf.add_argument("--roboflow_workspace", help="Roboflow workspace slug (required)")
        rf.add_argument("--roboflow_project", help="Roboflow project slug (required)")
        rf.add_argument("--roboflow_version", type=int, default=None,
                        help="Version to validate and record on the rows; the stream imports the project's "
                             "current images (Roboflow's search has no version filter)")
        rf.add_argument("--roboflow_api_url", default=DEFAULT_API_URL, help="Roboflow API root")
        rf.add_argument("--roboflow_rate_limit", type=float, default=None,
                        help="Roboflow requests per second for the whole job; adapts to 429s when omitted")
        rf.add_argument("--roboflow_stall_timeout", type=float, default=DEFAULT_STALL_TIMEOUT,
                        help="Seconds with no successful Roboflow call (only 429s) before the run stops and "
                             "dead-letters the rest as rate_limited (default 600); 429s are otherwise waited out")
        rf.add_argument("--roboflow_listing", choices=("auto", "token", "offset"), default="auto",
                        help="auto (default): parallel offset pages, completed by a token walk when they come back "
                             "short; token: continuation-token search only, stable but sequential; offset: parallel "
                             "pages only (unstable on Roboflow's side: misses are reported, not recovered)")
        rf.add_argument("--roboflow_api_key_secret", default=None,
                        help="Secret Manager version name holding the Roboflow key (Dataflow); "
                             "default: $ROBOFLOW_API_KEY")

        sb = parser.add_argument_group("Supabase target")
        sb.add_argument("--dataset_id", help="od_datasets.id to import into (required)")
        sb.add_argument("--supabase_url", default=None, help="Supabase project URL (default: $SUPABASE_URL)")
        sb.add_argument("--storage_bucket", default="od-images", help="Storage bucket for the originals")
        sb.add_argument("--create_bucket", action="store_true", default=False,
                        help="Create the bucket when it is missing (private)")
        sb.add_argument("--class_mapping", default=None,
                        help="JSON or YAML file: [{source_name, target_class_id, create_new, skip, color}], "
                             "or 'auto' to map every class to a dataset class of the same name")
        sb.add_argument("--supabase_key_secret", default=None,
                        help="Secret Manager version name holding the service-role key (Dataflow); "
                             "default: $SUPABASE_SERVICE_ROLE_KEY")

        run = parser.add_argument_group("Run")
        run.add_argument("--dead_letter_path", default="import-output/dead_letters",
                         help="Directory for dead letters (JSON Lines); gs:// works on Dataflow")
        run.add_argument("--summary_path", default="import-output/summary.json", help="Summary JSON file")
        run.add_argument("--batch_size", type=int, default=50, help="Images per batch")
        run.add_argument("--concurrency", type=int, default=None,
                         help=f"Concurrent requests per worker process, an upper bound. Default: Roboflow API "
                              f"calls as Little's law asks for the rate and the latency measured (at most "
                              f"{AUTO_MAX_IN_FLIGHT}), {DEFAULT_CONCURRENCY} for everything else")
        run.add_argument("--retry_dead_letters", default=None,
                         help="Directory of an earlier run's dead letters: re-import exactly those images")
        run.add_argument("--shards", type=int, default=None,
                         help="Batch key shards (default: 4 x workers)")
        run.add_argument("--quiet", action="store_true", default=False,
                         help="No progress line on stderr (the summary is still printed)")
        run.add_argument("--progress_interval", type=float, default=10.0,
                         help="Seconds between progress lines when stderr is not a terminal (default 10)")

        sel = parser.add_argument_group("Selection and plan")
        sel.add_argument("--split", default=None, help="Only images of this Roboflow split: train, valid or test")
        sel.add_argument("--tag", default=None, help="Only images carrying this Roboflow tag")
        sel.add_argument("--class_name", default=None, help="Only images with at least one box of this class")
        sel.add_argument("--query", default=None,
                         help="Raw RoboQL added to the listing query, e.g. 'filename:cam1 -tag:blurry' "
                              "(token listing only)")
        sel.add_argument("--plan", action="store_true", default=False,
                         help="Write nothing: print what the import would do (counts, bytes, time, unmapped "
                              "classes); exit 0 if it could run, 2 if not")
        sel.add_argument("--plan_json", action="store_true", default=False,
                         help="--plan, printed as JSON instead of a table")
        sel.add_argument("--prune", action="store_true", default=False,
                         help="After the import, remove this project's images from the dataset that Roboflow no "
                              "longer lists (only after a complete, unfiltered listing)")
        sel.add_argument("--prune_mode", choices=("delete", "mark"), default=None,
                         help="With --prune: delete rows and objects (default), or mark "
                              "od_dataset_images.source_missing_at (needs migration 0005)")

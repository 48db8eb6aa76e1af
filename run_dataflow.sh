#!/usr/bin/env bash
# Launch the importer on Google Cloud Dataflow. Parameters and Secret Manager handling arrive with
# the Dataflow issue; for now this passes everything through to the DataflowRunner.
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--help" ] || [ $# -eq 0 ]; then
  echo "usage: ./run_dataflow.sh --project GCP_PROJECT --region REGION --temp_location gs://... [importer options]"
  exit 0
fi
exec .venv/bin/python -m pipeline.main --runner=DataflowRunner --setup_file=./setup.py "$@"

#!/usr/bin/env bash
# Launch the importer on Google Cloud Dataflow: ./run_dataflow.sh --help for every parameter.
# The launcher parameters below become Dataflow pipeline options; every other argument goes unchanged
# to `python -m pipeline.main --runner=DataflowRunner`, which checks it (and reads the keys from Secret
# Manager for its preflight checks) before submitting. Keys are never arguments: workers read them from
# the Secret Manager versions named by --roboflow_api_key_secret and --supabase_key_secret.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

usage() {
  cat <<'EOF'
usage: ./run_dataflow.sh --project P --region R --temp_location gs://BUCKET/tmp \
         --roboflow_api_key_secret projects/P/secrets/S/versions/latest \
         --supabase_key_secret projects/P/secrets/S/versions/latest \
         [launcher options] IMPORTER OPTIONS [--dry-run]

Runs the Roboflow -> Supabase import on Google Cloud Dataflow (DataflowRunner, workers install this
package through setup.py). The launcher blocks until the job ends, then prints and writes the summary.

Launcher options (required first):
  --project P              GCP project that runs the job (required)
  --region R               Dataflow region, e.g. europe-west1 (required)
  --temp_location gs://... bucket path for temporary files (required)
  --staging_location gs://...  where the package is staged (default: <temp_location>/staging)
  --max_workers N          most workers the autoscaler may start (default 4); divides the rate limit
  --machine_type T         worker machine type (default n1-standard-2); its vCPUs = SDK processes per worker
  --service_account EMAIL  worker service account (needs Secret Manager accessor on both secrets,
                           Dataflow worker, and object admin on the buckets); default: Compute default
  --network NAME           VPC network (optional)
  --subnetwork URL         e.g. regions/R/subnetworks/S (optional); workers need egress to Roboflow,
                           Supabase and PyPI (public IPs or Cloud NAT)
  --job_name NAME          lowercase letters, digits, '-' (default roboflow-import-<UTC time>)
  --dry-run                check the parameters, print the exact command and exit (nothing contacts GCP,
                           Roboflow or Supabase; nothing is submitted)
  --help                   this text

Importer options (passed to python -m pipeline.main; see its --help):
  --roboflow_workspace WS --roboflow_project PROJ   the source (required)
  --dataset_id UUID                                 the target od_datasets.id (required)
  --supabase_url https://REF.supabase.co            (required)
  --class_mapping FILE|auto                         (required)
  --roboflow_api_key_secret projects/P/secrets/S/versions/V   the Roboflow key in Secret Manager (required)
  --supabase_key_secret projects/P/secrets/S/versions/V       the service_role key in Secret Manager (required)
  --roboflow_rate_limit R    requests/s for the whole job; each SDK process gets
                             R / (max_workers x vCPUs of machine_type)
  --dead_letter_path gs://...  (default: <temp_location>/roboflow-import/<job_name>/dead_letters)
  --summary_path FILE        written by the launcher (default import-output/summary.json)
  --roboflow_version N, --roboflow_api_url URL, --roboflow_listing token|offset, --storage_bucket B,
  --create_bucket, --batch_size N, --concurrency N, --shards N, --retry_dead_letters gs://...
  Any other Beam/Dataflow option (e.g. --experiments=no_use_multiple_sdk_containers,
  --sdk_container_image IMAGE, --number_of_worker_harness_threads N) is passed through too.

The launcher reads both secrets itself for the preflight checks (your gcloud credentials need
roles/secretmanager.secretAccessor on them); $ROBOFLOW_API_KEY and $SUPABASE_SERVICE_ROLE_KEY are not used.
EOF
}

die() { printf 'run_dataflow.sh: %s\n' "$*" >&2; exit 2; }

project="" region="" temp_location="" staging_location="" max_workers=4 machine_type=n1-standard-2
service_account="" network="" subnetwork="" job_name="" dry_run=0
importer=()
while [ $# -gt 0 ]; do
  arg=$1
  case "$arg" in
    --help|-h) usage; exit 0 ;;
    --dry-run|--dry_run) dry_run=1; shift; continue ;;
    --dry_run=*) die "--dry_run=... is Beam's graph-only dry run; use --dry-run to print the command" ;;
  esac
  name=${arg%%=*}
  case "$name" in
    --project|--region|--temp_location|--staging_location|--max_workers|--machine_type|--service_account|\
    --network|--subnetwork|--job_name)
      if [ "$name" != "$arg" ]; then value=${arg#*=}; shift
      else
        [ $# -ge 2 ] || die "$name needs a value"
        value=$2; shift 2
      fi
      var=${name#--}
      printf -v "$var" '%s' "$value"
      ;;
    *key*) case "$name" in *secret*|--dataflow_kms_key) ;; *) die "$name: keys are never options (they would show in the Dataflow \
console); store the key in Secret Manager and pass --roboflow_api_key_secret / --supabase_key_secret" ;; esac
      importer+=("$arg"); shift ;;
    *) importer+=("$arg"); shift ;;
  esac
done
for key_var in ROBOFLOW_API_KEY SUPABASE_SERVICE_ROLE_KEY; do  # a key pasted as a value is never printed or run
  key=${!key_var:-}
  for arg in "${importer[@]+"${importer[@]}"}"; do
    [ -z "$key" ] || [[ "$arg" != *"$key"* ]] || die "an argument holds the value of \$$key_var; keys are never \
options: store it in Secret Manager and pass its version name"
  done
done

[ -n "$project" ] || die "--project is required; pass the GCP project id, e.g. --project my-gcp-project"
[ -n "$region" ] || die "--region is required; pass a Dataflow region, e.g. --region europe-west1"
[ -n "$temp_location" ] || die "--temp_location is required; pass a bucket path, e.g. --temp_location gs://my-bucket/tmp"
case "$temp_location" in gs://?*) ;; *) die "--temp_location must be a gs:// path (got $temp_location)" ;; esac
staging_location=${staging_location:-${temp_location%/}/staging}
case "$staging_location" in gs://?*) ;; *) die "--staging_location must be a gs:// path (got $staging_location)" ;; esac
[[ "$max_workers" =~ ^[1-9][0-9]*$ ]] || die "--max_workers must be a positive integer (got $max_workers)"
job_name=${job_name:-roboflow-import-$(date -u +%Y%m%d-%H%M%S)}
[[ "$job_name" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "--job_name $job_name: use lowercase letters, digits and '-', starting with a letter"

has_option() {  # is --$1 among the importer options?
  local arg
  for arg in "${importer[@]+"${importer[@]}"}"; do
    case "$arg" in "--$1"|"--$1="*) return 0 ;; esac
  done
  return 1
}
for secret in roboflow_api_key_secret supabase_key_secret; do
  has_option "$secret" || die "--$secret is required: Dataflow workers read keys only from Secret Manager; \
pass --$secret projects/PROJECT/secrets/NAME/versions/latest"
done
has_option dead_letter_path \
  || importer+=("--dead_letter_path=${temp_location%/}/roboflow-import/$job_name/dead_letters")

command=("$PYTHON" -m pipeline.main --runner=DataflowRunner "--project=$project" "--region=$region"
  "--temp_location=$temp_location" "--staging_location=$staging_location" "--job_name=$job_name"
  "--max_num_workers=$max_workers" "--machine_type=$machine_type" "--setup_file=$ROOT/setup.py")
[ -z "$service_account" ] || command+=("--service_account_email=$service_account")
[ -z "$network" ] || command+=("--network=$network")
[ -z "$subnetwork" ] || command+=("--subnetwork=$subnetwork")
command+=("${importer[@]+"${importer[@]}"}")

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${command[@]}" | sed 's/ $//'
  echo
  exit 0
fi
[ -x "$PYTHON" ] || die "$PYTHON not found; run ./scripts/bootstrap.sh first"
exec "${command[@]}"

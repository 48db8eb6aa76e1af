"""The Dataflow share of the rate limit: workers x SDK processes per worker (one per vCPU)."""

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import launch
from pipeline.errors import InputError


@pytest.mark.parametrize("machine_type, vcpus", [
    ("n1-standard-1", 1), ("n1-standard-4", 4), ("n2-highmem-16", 16), ("e2-highcpu-8", 8), ("c2d-standard-112", 112),
    ("c3-standard-4-lssd", 4), ("e2-medium", 2), ("g1-small", 1), ("custom-6-23040", 6), ("n2-custom-8-16384", 8),
    ("n1-custom-2-13312-ext", 2), ("zones/europe-west1-b/machineTypes/n1-standard-8", 8),
])
def test_vcpus_of_machine_types(machine_type, vcpus):
    assert launch.vcpus(machine_type) == vcpus


@pytest.mark.parametrize("machine_type", ["a2-highgpu-1g", "n1-standard-0", "big", ""])
def test_unknown_machine_type_names_the_way_out(machine_type):
    with pytest.raises(InputError, match="no_use_multiple_sdk_containers"):
        launch.vcpus(machine_type)


@pytest.mark.parametrize("flags, processes", [
    (["--max_num_workers=5", "--machine_type=n1-standard-4"], 20),
    (["--max_num_workers=5", "--machine_type=n1-standard-4", "--experiments=no_use_multiple_sdk_containers"], 5),
    (["--max_num_workers=3", "--machine_type=a2-highgpu-1g", "--experiments=no_use_multiple_sdk_containers"], 3),
    (["--num_workers=6", "--autoscaling_algorithm=NONE", "--machine_type=n1-standard-2"], 12),
    (["--num_workers=2", "--max_num_workers=8", "--machine_type=n1-standard-2"], 16),
])
def test_dataflow_processes_share_the_rate_limit(flags, processes):
    assert launch.dataflow_processes(PipelineOptions(flags)) == processes


@pytest.mark.parametrize("flags, message", [
    (["--machine_type=n1-standard-2"], "--max_num_workers is required"),
    (["--num_workers=4", "--machine_type=n1-standard-2"], "--max_num_workers is required"),  # autoscaling may add
    (["--max_num_workers=4"], "--machine_type is required"),
])
def test_an_uncapped_or_unsized_job_is_refused(flags, message):
    with pytest.raises(InputError, match=message):
        launch.dataflow_processes(PipelineOptions(flags))

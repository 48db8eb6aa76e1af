"""A faithful local Roboflow API emulator (API host + CDN host) for tests and benchmarks.

The official ``roboflow`` SDK runs against it unchanged (set ``API_URL`` to ``emu.api_url``), and
FaultConfig reproduces the production quirks an importer has to survive::

    with RoboflowEmulator(EmulatorConfig(image_count=200, seed=7), faults=FaultConfig(throttle_rate=0.05)) as emu:
        emu.api_url, emu.cdn_url        # API root, and the origin of image URLs and export links
        emu.dataset.image_ids           # listing order; emu.dataset.image(id) is the record served
        emu.counters()                  # {"search": 3, "search:429": 1, "status:200": 2, "fault:throttle": 1, ...}
        emu.set_faults(reset_count=2)   # change faults at runtime (counts and chosen images start over)
        emu.fault_targets()             # ids hit by count-based faults (deleted_after_listing, undecodable, ...)

A separate process uses ``python -m pipeline.testing.roboflow_emulator`` and the ``/__emulator/``
routes (counters, faults, targets, dataset, images/{id}/delete|boxes) instead.
"""

from .config import EmulatorConfig, FaultConfig
from .dataset import Dataset, ImageRecord, VersionSnapshot
from .emulator import RoboflowEmulator
from .exports import export_file_name
from .images import sniff_content_type

__all__ = [
    "Dataset",
    "EmulatorConfig",
    "FaultConfig",
    "ImageRecord",
    "RoboflowEmulator",
    "VersionSnapshot",
    "export_file_name",
    "sniff_content_type",
]

"""Latency: device cost models fitted on public measurements, and per-layer estimates.

Role: ``estimate_latency(model, example_input, device)`` predicts a model's
batch-1 latency on a device profile, per layer, each number naming its source
(which model, fitted on what, and its validated error). Device profiles
(``list_devices()``) are per-operator cost models fitted on the calibration
split of the public Raspberry Pi / Jetson NAS-Bench-201 measurements and
validated on the holdout split, which is never used to fit anything.
Measured lookup tables and the on-device profiler arrive with the rest of the
latency-models issue; nothing here pretends to be measured.
"""

from edgecompress.latency_models.device_model import DeviceModel
from edgecompress.latency_models.devices import calibrate, list_devices, load_device, validate
from edgecompress.latency_models.estimate import LatencyReport, estimate_latency

__all__ = [
    "DeviceModel",
    "LatencyReport",
    "calibrate",
    "estimate_latency",
    "list_devices",
    "load_device",
    "validate",
]

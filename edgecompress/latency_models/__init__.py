"""Latency: device cost models fitted on public measurements, and per-layer estimates.

Role: ``estimate_latency(model, example_input, device)`` predicts a model's
batch-1 latency on a device profile, per layer, each number naming its source
(which model, fitted on what, and its validated error). Device profiles
(``list_devices()``) are per-operator cost models fitted on the calibration
split of the public Raspberry Pi / Jetson NAS-Bench-201 measurements and
validated on the holdout split, which is never used to fit anything, or
measured lookup tables (``LatencyTable``) that ``edgecompress profile`` builds
on the machine it runs on. ``priced_precisions(device)`` says which precisions
a device can price per layer (a search asks it before pricing 8-bit or fp16
activations).
"""

from edgecompress.latency_models.device_model import DeviceModel
from edgecompress.latency_models.devices import calibrate, list_devices, load_device, validate
from edgecompress.latency_models.estimate import LatencyReport, estimate_latency, priced_precisions
from edgecompress.latency_models.table import LatencyTable

__all__ = [
    "DeviceModel",
    "LatencyReport",
    "LatencyTable",
    "calibrate",
    "estimate_latency",
    "list_devices",
    "load_device",
    "priced_precisions",
    "validate",
]

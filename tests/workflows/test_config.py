from __future__ import annotations

import pytest

from edgecompress.errors import ConfigError
from edgecompress.workflows.config import load_run_config


def test_unknown_device_suggests() -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config(None, {"device": "raspberry-pi4"})
    msg = str(err.value)
    assert "device = 'raspberry-pi4': unknown device. Did you mean 'raspberry-pi-4'?" in msg
    assert "Valid devices: host, host-2thread, jetson-nano" in msg
    assert load_run_config(None, {"device": "host-1thread"}).device == "host"  # a former name, recorded as now

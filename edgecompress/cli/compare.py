"""``edgecompress compare`` and ``edgecompress compress``: registered on the main app when imported."""

from __future__ import annotations

#!/usr/bin/env bash
# Make Fashion-MNIST available: already there, else the Debian package, else torchvision's downloader.
set -euo pipefail
PY=${PY:-python3}
if "$PY" -m edgecompress data locate >/dev/null 2>&1; then
  echo "Fashion-MNIST: $("$PY" -m edgecompress data locate)"
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
  fi
  echo "Installing the Debian package dataset-fashion-mnist"
  if { $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
       || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; }; }; then
    echo "Fashion-MNIST: $("$PY" -m edgecompress data locate)"
    exit 0
  fi
  echo "apt-get could not install dataset-fashion-mnist; trying torchvision's downloader" >&2
fi
if "$PY" -m edgecompress data download; then
  exit 0
fi
echo "Could not get Fashion-MNIST. Install the Debian package dataset-fashion-mnist, or put the four" >&2
echo "idx .gz files in a folder and set EDGECOMPRESS_DATA to it." >&2
exit 1

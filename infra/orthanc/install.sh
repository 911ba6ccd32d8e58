#!/usr/bin/env bash
# Installs Orthanc and its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb) when Orthanc is missing.
# Idempotent: does nothing when both are there. As root (CI) it installs them with apt-get; as another user it
# prints the commands to run. The tests, the benchmark and `make pacs-demo` start Orthanc themselves as a child
# process on 127.0.0.1; the Debian service is neither needed nor started here.
set -euo pipefail

PACKAGES=(orthanc orthanc-dicomweb)
plugin_installed() { compgen -G "/usr/share/orthanc/plugins/libOrthancDicomWeb.so" >/dev/null \
    || compgen -G "/usr/lib/orthanc/libOrthancDicomWeb.so*" >/dev/null; }

if command -v Orthanc >/dev/null 2>&1 && plugin_installed; then
    echo "Orthanc is installed: $(Orthanc --version 2>/dev/null | head -n 1)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "Orthanc (with its DICOMweb plugin) is missing. As a user with sudo rights, run:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y ${PACKAGES[*]}" >&2
    echo "(the packages may start a system service on ports 8042/4242; the project's tests do not need it:" >&2
    echo " 'sudo systemctl disable --now orthanc' stops it)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${PACKAGES[@]}"
echo "Orthanc is installed: $(Orthanc --version 2>/dev/null | head -n 1)"
echo "(where an init system runs, Debian may have started its orthanc service on ports 8042/4242; the project's"
echo " tests and demo start their own on free ports and do not need it)"

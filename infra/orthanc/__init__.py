"""Orthanc as a local PACS for the DICOM node's tests, benchmark and demo (never as a system service)."""

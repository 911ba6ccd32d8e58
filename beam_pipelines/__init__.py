"""Beam jobs that turn chest X-ray sources into TFRecords, synthesise data, and predict."""

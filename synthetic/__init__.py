"""Synthetic chest X-ray data in the real published layouts, apart from the production path.

There is no real X-ray data in the repository, so the demo, the tests and the benchmarks
run on data made here: `phantom` renders chest-like radiographs with a learnable class
signal, `dicom_writer` wraps them as DICOMs the way RSNA and clinical archives store
them, `pipeline` is the Beam job (`python -m synthetic`) that writes the
RSNA and covid-chestxray-dataset folder layouts, and `records` writes training-ready
TFRecords directly for tests that need them in seconds. Dataflow and Vertex AI workers
do not need any of it: `setup.py` leaves this package out of what they install.
"""

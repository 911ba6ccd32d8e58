"""Packaging for the chest X-ray classifier: Dataflow workers install the job with
`--setup_file ./setup.py`, and `make` installs it into `.venv` for local runs."""

import setuptools

REQUIRED_PACKAGES = [
    "tensorflow~=2.21.0",
    "apache-beam[gcp]~=2.77.0",
    "tfx-bsl~=1.21.0",
    "pydicom~=3.0",
    "pylibjpeg~=2.1",
    "pylibjpeg-libjpeg~=2.5",
    "pylibjpeg-openjpeg~=2.6",
    "pylibjpeg-rle~=2.2",
    "pillow>=11,<14",
    "numpy>=1.26,<3",
    "google-cloud-storage>=2.18,<4",
    "absl-py>=1.4,<2",
    "tensorboard~=2.21.0",
    # Reference metrics (ROC-AUC, ROC curve, confusion matrix, calibration curve, logistic baselines).
    "scikit-learn~=1.9",
    # Temperature scaling minimises the validation NLL with scipy.optimize (trainer/evaluation/calibration.py).
    "scipy>=1.13,<2",
    # cxr-node's DICOM network: its C-STORE SCP, and C-STORE of results to a PACS.
    "pynetdicom~=3.0",
    # cxr-node's results as DICOM: the TID 1500 Structured Report and the heat-map Secondary Capture.
    "highdicom~=0.28",
    # cxr-node's STOW-RS of results to a DICOMweb server.
    "dicomweb-client~=0.61",
]

PRODUCTION_PACKAGES = ("cxr_core", "serving", "beam_pipelines", "trainer")

setuptools.setup(
    name="cxr-classifier",
    version="0.1.0",
    description="Chest X-ray classification (normal / pneumonia / COVID-19): Beam data plane and TF trainer.",
    python_requires=">=3.11,<3.12",
    # The production packages; `synthetic`, `benchmarks` and `tests` are development tools run from the source tree.
    packages=setuptools.find_packages(include=[f"{package}{suffix}" for package in PRODUCTION_PACKAGES
                                               for suffix in ("", ".*")]),
    install_requires=REQUIRED_PACKAGES,
    # gcp-storage-emulator: the Cloud Storage emulator of tests/test_gcs_emulator.py and `make cloud-demo`.
    extras_require={"test": ["pytest~=9.0", "gcp-storage-emulator==2026.7.19"]},
    entry_points={"console_scripts": ["cxr-predict=serving.study:main", "cxr-node=serving.dicom_node:main"]},
)

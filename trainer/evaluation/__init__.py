"""The evaluation library: a trained model's predictions on labelled images turned into per-class figures with
their intervals, the decision rule chosen on val, calibration, subgroups, the shortcut audit, the failure
gallery, the printed report and the model card. Training (`trainer.train`) and the evaluation CLI
(`python -m trainer.evaluate`) both use it; it imports nothing from the rest of `trainer` (only `cxr_core`,
`serving` and third-party packages), which tests/test_architecture.py checks.
"""

"""Serving: what turns a trained model into predictions, in one place.

`export` writes the SavedModel and its signatures (which average over the zooms of
`test_time_augmentation`), `model_store` loads one with the contract it was trained
under, `batch_predict` is the Beam job over many files,
`study` the `cxr-predict` command for one, and `gradcam` the heat map it can draw.
All of them decode inputs with `cxr_core.imaging.preprocess_image`, the function
that made the training records.
"""

"""Single-study prediction: `cxr-predict FILE --model_dir DIR [--gradcam OUT.png]`.

Prints the predicted class and the three class probabilities for one DICOM, PNG or JPEG,
computed as batch prediction computes them: `imaging.preprocess_image`, the training
preprocessing, at the image size the model states (`serving.model_store`), then the
exported `predict_png` signature. `--gradcam` also writes the
image with a Grad-CAM heat map over it (see serving.gradcam), made with the Keras model
the trainer saves next to its export.

The file is read and decoded before TensorFlow is imported: an unreadable study is
reported at once, in one line, without TensorFlow's seconds of start-up and log lines.
"""

import argparse
import os

import numpy as np

from cxr_core import contract, imaging

PROG = "cxr-predict"


class StudyError(Exception):
    """A problem the user can fix (the file, the model folder or a flag), shown as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("file", help="A DICOM, PNG or JPEG chest X-ray (local path).")
    parser.add_argument("--model_dir", required=True,
                        help="The trainer's --job_dir, or its export/ folder (local or gs://).")
    parser.add_argument("--gradcam", metavar="OUT.png",
                        help="Also write the image with its Grad-CAM heat map for the predicted class "
                             "(needs model.keras, which the trainer writes in its job dir).")
    return parser


def read_study(path: str) -> bytes:
    """The file's bytes."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise StudyError(f"cannot read {path}: {error.strerror or error}") from error


def decode_study(data: bytes, path: str, image_size: int) -> np.ndarray:
    """The study's pixels as the model sees them: uint8 grayscale [image_size, image_size]."""
    try:
        return imaging.preprocess_image(data, image_size, path).pixels
    except imaging.ImageDecodeError as error:
        raise StudyError(f"cannot use {path}: {error.reason}") from error


def format_prediction(class_id: int, probabilities: np.ndarray) -> list[str]:
    """`name: value` lines, named like the batch prediction CSV's columns."""
    lines = [f"predicted_class: {contract.CLASS_NAMES[class_id]}"]
    lines += [f"p_{name}: {probability:.6f}" for name, probability in zip(contract.CLASS_NAMES, probabilities)]
    return lines


def predict_study(data: bytes, path: str, pixels: np.ndarray, model_dir: str, gradcam_path: str | None) -> list[str]:
    """Runs the exported model at the size its contract states (and Grad-CAM on request); returns the lines to print.

    `pixels` were decoded before TensorFlow loaded, at the default image size; the study is
    decoded again only if the model takes another size.
    """
    import tensorflow as tf  # Deferred: see the module docstring.

    from serving import gradcam, model_store

    try:
        loaded = model_store.load(model_dir)
    except model_store.ModelStoreError as error:
        raise StudyError(str(error)) from error
    image_size = loaded.contract.image_size
    if pixels.shape[0] != image_size:
        pixels = decode_study(data, path, image_size)
    predict_png = loaded.signatures[contract.SERVING_PNG_SIGNATURE]
    try:
        outputs = predict_png(**{contract.PNG_INPUT: tf.constant([imaging.encode_png(pixels)])})
    except tf.errors.InvalidArgumentError as error:
        raise StudyError(f"the model in {loaded.export_dir} does not take the {image_size}x{image_size} images its "
                         "metadata states: re-export it with the current trainer") from error
    class_id = int(outputs[contract.CLASS_ID_OUTPUT][0])
    lines = format_prediction(class_id, outputs[contract.PROBABILITIES_OUTPUT].numpy()[0])
    if gradcam_path:
        try:
            model = gradcam.load_model(os.path.dirname(loaded.export_dir.rstrip("/")))
        except FileNotFoundError as error:
            raise StudyError(str(error)) from error
        heat_map = gradcam.GradCam(model).heat_map(pixels, class_id)
        try:
            gradcam.save_overlay(gradcam_path, pixels, heat_map)
        except tf.errors.OpError as error:
            raise StudyError(f"cannot write {gradcam_path}: {error.message}") from error
        lines.append(f"gradcam: {gradcam_path}")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Console entry point; exits with status 1 and a one-line message on a problem."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        data = read_study(args.file)
        pixels = decode_study(data, args.file, contract.DEFAULT_IMAGE_SIZE)
        lines = predict_study(data, args.file, pixels, args.model_dir, args.gradcam)
    except StudyError as error:
        raise SystemExit(f"{PROG}: {error}") from None
    print("\n".join(lines))


if __name__ == "__main__":
    main()

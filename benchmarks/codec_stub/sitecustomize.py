"""Replaces the codec work in every Python process that starts with this folder on PYTHONPATH.

For one benchmark job only: with `$CXR_CODEC_STUB_IMAGE` naming an image file, every
call to `imaging.preprocess_image` returns that file's preprocessed image and every
`imaging.encode_png` returns its PNG, both computed once per process. The job then does
everything else it does per image (list, read the file, hash it, split, build the
Example, shuffle, write GZIP shards) on realistic records, so its CPU per image is what
the job costs on top of the codec: the runner's floor. Python imports `sitecustomize`
at start-up, so the local runner's worker processes load it too. Without that variable
it does nothing.
"""

import os

if os.environ.get("CXR_CODEC_STUB_IMAGE"):
    import functools

    from cxr_core import imaging

    with open(os.environ["CXR_CODEC_STUB_IMAGE"], "rb") as _handle:
        _IMAGE_BYTES = _handle.read()
    _preprocess, _encode = imaging.preprocess_image, imaging.encode_png

    @functools.cache
    def _decoded(image_size: int) -> imaging.DecodedImage:
        return _preprocess(_IMAGE_BYTES, image_size)

    @functools.cache
    def _png(image_size: int) -> bytes:
        return _encode(_decoded(image_size).pixels)

    imaging.preprocess_image = lambda data, image_size, uri="", max_pixels=0: _decoded(image_size)
    imaging.encode_png = lambda pixels: _png(pixels.shape[0])

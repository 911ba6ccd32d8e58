"""The data contract: size limits and shard names."""

import fnmatch

import pytest

from cxr_core import contract


@pytest.mark.parametrize("size, usable", [(contract.MIN_IMAGE_SIZE - 1, False), (contract.MIN_IMAGE_SIZE, True),
                                          (contract.DEFAULT_IMAGE_SIZE, True), (contract.MAX_IMAGE_SIZE, True),
                                          (contract.MAX_IMAGE_SIZE + 1, False)])
def test_image_size_limits(size, usable):
    assert (contract.image_size_problem(size) is None) == usable


def test_shard_names_match_their_split_pattern():
    for split in contract.SPLITS:
        name = contract.shard_name(split, 3, 10)
        assert name == f"{split}-00003-of-00010{contract.TFRECORD_SUFFIX}"
        assert fnmatch.fnmatch(name, contract.shard_pattern(split))
        others = [other for other in contract.SPLITS if other != split]
        assert not any(fnmatch.fnmatch(name, contract.shard_pattern(other)) for other in others)

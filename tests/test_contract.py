"""The data contract is importable by every half without pulling in Beam or TensorFlow."""

import fnmatch
import subprocess
import sys

import pytest

from beam_pipelines import contract


def test_importing_the_contract_loads_neither_beam_nor_tensorflow():
    probe = ("import sys; import beam_pipelines.contract; "
             "print(sorted(m for m in ('apache_beam', 'tensorflow', 'keras') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


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

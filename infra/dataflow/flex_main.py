"""What the Dataflow Flex Template launcher runs inside the template image.

The launcher executes `python $FLEX_TEMPLATE_PYTHON_PY_FILE --name=value ...` with the template
parameters and the Dataflow options. This file only picks the Beam job the image was built for
($CXR_PIPELINE) and hands it those arguments. Importing the job from the installed package,
instead of pointing the launcher at the module file, keeps its DoFns importable by their module
name on the workers, which run the same image.
"""

import importlib
import logging
import os
import sys

PIPELINES = {"preprocess": "beam_pipelines.preprocess", "predict": "beam_pipelines.batch_predict"}


def main(argv: list[str]) -> None:
    pipeline = os.environ.get("CXR_PIPELINE", "")
    if pipeline not in PIPELINES:
        raise SystemExit(f"CXR_PIPELINE must be one of {', '.join(PIPELINES)} (set by "
                         f"`docker build --build-arg PIPELINE=...`), got {pipeline!r}")
    logging.getLogger().setLevel(logging.INFO)
    importlib.import_module(PIPELINES[pipeline]).run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])

"""`python -m beam_pipelines.predict`: the batch prediction job, at the command users know.

The job itself lives with the rest of serving, in `beam_pipelines.batch_predict`.
"""

import sys

from beam_pipelines import batch_predict
from beam_pipelines.options import configure_logging

if __name__ == "__main__":
    configure_logging()
    batch_predict.run(sys.argv[1:])

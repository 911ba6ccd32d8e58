"""`python -m synthetic`: runs the synthetic-data job.

The job is run from its importable module, not from `__main__`, so that workers in other
processes can unpickle its work items and DoFns by their importable names.
"""

from beam_pipelines.options import configure_logging
from synthetic import pipeline

if __name__ == "__main__":
    configure_logging()
    pipeline.run()

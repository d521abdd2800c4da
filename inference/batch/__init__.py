"""Score millions of images on a Ray cluster into a Parquet dataset (`iqa batch`).

The job is a Ray Data pipeline with two stages:

1. **prepare** (Ray tasks, many in parallel): read each input from local disk, object
   storage (pyarrow file systems) or http(s) (the SSRF-safe fetcher the server uses),
   then decode and preprocess it with :meth:`QualityModel.prepare`;
2. **score** (an actor pool): each actor loads one :class:`QualityModel` once and scores
   batches with :meth:`QualityModel.score_tensors`.

The driver consumes the results and writes them as Parquet part files under OUTPUT.
Results are tiny (a path and a few numbers per image), so funnelling them through the
driver costs nothing next to decoding, and it lets every part file appear atomically:
a rerun reads the ``path`` column of the parts already there and skips those inputs.

Ray and pyarrow are imported inside functions: ``import iqa.inference`` must not pull
them, and nothing imports this module implicitly.

The package's modules, in the order a job runs through them: ``sources`` (what INPUT
names, and how a worker reads one input), ``stages`` (the Ray task and actor), ``parts``
(the Parquet output and what it already holds) and ``job`` (`score_batch`).
"""

from .job import (
    DEFAULT_CPUS_PER_ACTOR,
    VALUE_RANGES,
    BatchSummary,
    parse_actors,
    score_batch,
    value_problem,
)
from .parts import PartWriter, output_schema, read_done
from .sources import BatchInputError, glob_regex, is_uri, list_inputs, s3_options_from_endpoint

__all__ = [
    "DEFAULT_CPUS_PER_ACTOR",
    "VALUE_RANGES",
    "BatchInputError",
    "BatchSummary",
    "PartWriter",
    "glob_regex",
    "is_uri",
    "list_inputs",
    "output_schema",
    "parse_actors",
    "read_done",
    "s3_options_from_endpoint",
    "score_batch",
    "value_problem",
]

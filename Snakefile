"""LLM4REC: graph-edge-aware LLM recommendation, from raw reviews to a report."""

import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))
# Jobs (local, conda or SLURM) import the library from this checkout, and shell jobs find
# the Python (and `accelerate`) that runs Snakemake unless a conda environment comes first.
os.environ.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.getenv("PATH", "")]))
os.environ.update(LLM4REC_SCRIPTS=str(Path(workflow.basedir) / "workflow" / "scripts"))
os.environ.update(PYTHONPATH=os.pathsep.join([str(SRC), *os.getenv("PYTHONPATH", "").split(os.pathsep)]).rstrip(os.pathsep))

import llm4rec  # noqa: E402  (after the path set-up above)
from llm4rec import config_check  # noqa: E402


configfile: "config.yaml"


# A short message naming the offending setting instead of Snakemake's schema dump; then the
# checks the schema cannot express (backbone reachable, head count), before any job is planned.
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
try:
    validate(config, str(SCHEMA))
except WorkflowError:
    raise config_check.ConfigError(config_check.schema_message(config, config_check.load_schema(SCHEMA))) from None
config_check.check_config(config)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/graph.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True

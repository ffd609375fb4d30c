"""LLM4REC: graph-edge-aware LLM recommendation, from raw reviews to a report."""

import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

# Shell jobs find the Python (and `accelerate`) that runs Snakemake unless a conda
# environment comes first, and launch.sh by $LLM4REC_SCRIPTS. The library is the installed
# package (`make setup`: an editable install of src/; envs/llm4rec.yaml for conda jobs).
os.environ.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.getenv("PATH", "")]))
os.environ.update(LLM4REC_SCRIPTS=str(Path(workflow.basedir) / "workflow" / "scripts"))
# OpenMP threads that spin while they wait starve the other jobs on shared cores (BENCHMARKS.md):
# the script jobs wait passively too (launch.sh sets it for the training jobs), unless set.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import llm4rec
except ModuleNotFoundError:
    raise WorkflowError("the llm4rec library is not installed: run `make setup` (or `pip install -e .`)") from None
from llm4rec.core import config as config_check
from llm4rec.model.checks import check_backbone


configfile: "config.yaml"


# A short message naming the offending setting instead of Snakemake's schema dump; then the
# checks the schema cannot express (backbone reachable, head count), before any job is planned.
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
# First the size: a YAML alias bomb would otherwise be printed whole in the schema's error.
config_check.check_size(config)
try:
    validate(config, str(SCHEMA))
except WorkflowError:
    raise config_check.ConfigError(config_check.schema_message(config, config_check.load_schema(SCHEMA))) from None
config_check.check_config(config)
check_backbone(
    config["model"]["backbone"], config["model"]["attn_implementation"], config["model"].get("backbone_revision")
)
config_check.check_ease_memory(config, local=workflow.local_exec)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/graph.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),

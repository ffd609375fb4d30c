"""Bar chart of the test metrics per method with their spread over seeds."""

import pandas as pd

from llm4rec.core.logs import log_to
from llm4rec.report.figures import plot_methods

with log_to(snakemake.log[0]):
    plot_methods(pd.read_csv(snakemake.input.methods), pd.read_csv(snakemake.input.summary), snakemake.output[0])

# Snakemake reads config.yaml with its own YAML loader (`configfile:`, next in the Snakefile), which
# keeps the last of two equal keys without a word and reports malformed YAML without a line. The
# same files are read here first with the project's strict loader (mhsa.io): a key given twice
# or a syntax error is one line naming the file, the line and the key (docs/reliability.md,
# "Duplicates" and "Clear errors"). Files given with --configfile were parsed by Snakemake before
# this file runs; a repeated key in them is still caught here.

from snakemake.exceptions import WorkflowError

from mhsa.errors import describe
from mhsa.study.build import check_config_files

try:
    check_config_files(["config.yaml", *map(str, workflow.overwrite_configfiles)])
except Exception as err:
    message = describe(err)
    if message is None:
        raise
    raise WorkflowError(message) from None

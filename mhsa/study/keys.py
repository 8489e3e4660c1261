"""The keys config.yaml may hold, read from its JSON schema (mhsa/study/config.schema.yaml), the one
place they are written.

The Snakefile validates config.yaml against that schema (`SCHEMA_PATH`, the file of the installed
package) and `mhsa.study.build` rejects, naming them, the keys these sets
do not hold: a misspelled key is an error, never ignored (a row with `fusoin: concat` would otherwise
silently become another row's cell). The schema's order is kept: `KNOBS` orders a cell's knobs.
"""

from __future__ import annotations

from pathlib import Path

from mhsa.io import load_file

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
SCHEMA = load_file(SCHEMA_PATH)
_DEFS, _TOP = SCHEMA["definitions"], SCHEMA["properties"]
_TABLE = _TOP["tables"]["additionalProperties"]["properties"]
_FIGURE = _TOP["figures"]["additionalProperties"]["properties"]

TOP_KEYS = tuple(_TOP)
# what a variant, variant_defaults or a row may set; a row adds its name, variant, test mode, paper row
KNOBS = tuple(_DEFS["knob_values"]["properties"])
ROW_KEYS = (*_DEFS["row"]["properties"], *KNOBS)
DATASET_KEYS = tuple(_TOP["datasets"]["additionalProperties"]["properties"])
PRESET_KEYS = tuple(_TOP["presets"]["additionalProperties"]["properties"])
TABLE_KEYS = tuple(_TABLE)
FIGURE_KEYS = tuple(_FIGURE)
SWEEP_KEYS = tuple(_FIGURE["sweep"]["properties"])
WORKFLOW_KEYS = tuple(_TOP["workflow"]["properties"])
# how mhsa.study.plots may draw a table or a figure (`plot.kind`)
TABLE_PLOT_KINDS = tuple(_TABLE["plot"]["properties"]["kind"]["enum"])
FIGURE_PLOT_KINDS = tuple(_FIGURE["plot"]["properties"]["kind"]["enum"])

"""The study: config.yaml as cells and table rows, and what is made from the finished cells.

`build` (config.yaml -> deduplicated training cells and table rows, validated before any job runs),
`tables` (metrics.json + `paper_results.csv` -> the paper's tables beside ours), `uncertainty` (the
interval of every table number and the test behind every mark; `welch`: Welch's t-test), `plots` (the
paper's figures), `diagnostic_plots` (the diagnostics of a family of cells).

The top layer: it may import every other layer; nothing imports it but the entry points
(docs/architecture.md "Layers").
"""

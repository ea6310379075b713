"""The Dask graph by stage: `slides` (readers), `tissue` (mask, grid, QC), `graph` (batch,
tasks, tiling, store, resume, heatmaps), `export`, `cohort`, `synth`, `evaluation`, `bench` and
`demo`. Import from the stage that holds a name; this package loads none of them, so a command
that needs one stage does not wait for the rest (the graph's loads PyTorch)."""

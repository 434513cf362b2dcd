"""Many runs: hyperparameter sweeps on Optuna (`sweep`, `space`), comparing run folders
(`compare`) and a self-contained HTML report of one run (`report`).

Owns: the search-space file, the study and its trials, the comparison table and plot, the
report page. Each trial is a normal run folder made by `train.loop.run`; everything read
back comes from run folders (metrics.jsonl is the record). Never imports `api`, `serve`,
`cli` or a named application.
"""

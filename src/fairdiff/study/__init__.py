"""Studies: measured answers to claims about fixing a model's bias (LoRA against W, stacking adapters).

A study is a few reusable stages (an arm set, a prompt set, a measure) whose results are cached on disk, so a
killed study resumes and reuses finished audits; `fairdiff study --help` lists the studies.
"""

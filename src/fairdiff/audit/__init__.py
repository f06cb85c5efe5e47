"""Audits: suites x arms -> a resumable, shardable run dir. Importing the package registers every arm kind:
the mitigation arms live in their own modules (`arms_*.py`) beside the base kinds of `arms.py`."""

from fairdiff.audit import arms_edit, arms_finetune, arms_prompting, arms_scene  # noqa: F401  (each registers arm kinds)

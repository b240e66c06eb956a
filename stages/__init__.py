"""The pipeline's stage scripts, run by dvc.yaml as `python -m stages.<name>` from the workspace root."""

"""The stage runner and everything that can only accept, refuse or describe a stage's inputs: params schema,
command line, logging and progress, one-line summaries, where a stage runs. Never a DVC dependency: nothing
here can change a result (tests/test_dvc_yaml.py exempts this folder, and only this folder).
"""

"""The stage runner and everything that can only accept, refuse or describe a stage's inputs: params schema,
command line, one-line summaries, how a stage is launched on several workers. Never a DVC dependency: nothing here
can change a result, and nothing below it imports it (tests/test_layout.py; tests/test_dvc_yaml.py exempts this
folder).
"""

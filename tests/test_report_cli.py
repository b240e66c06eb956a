"""`vggbn report` and `vggbn plots-template`: fast help, one-line errors, and the template named in the local
DVC config (never over a template of the user's own)."""

import subprocess

import pytest

from vggbn import cli
from vggbn.pages import plots_template


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, message", [
    (["report", "--rev", "a"], "not a DVC project"),
    (["plots-template"], "not a DVC project"),
])
def test_outside_a_project_is_a_one_line_error(in_tmp, capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_report_takes_one_or_two_revisions(in_tmp, capsys):
    (in_tmp / ".dvc").mkdir()
    code, _, err = run(capsys, "report", "--rev", "a", "--rev", "b", "--rev", "c")
    assert code == 2 and "give one or two revisions, got 3" in err


def test_plots_template_names_the_template_in_the_local_config_but_not_over_the_users(in_tmp, capsys):
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["dvc", "init", "-q"], check=True)
    (in_tmp / "plots_template").mkdir()
    (in_tmp / "plots_template/offline.html").write_text("<html>{plot_divs}</html>")  # present: not rewritten
    code, out, _ = run(capsys, "plots-template")
    assert code == 0 and "offline.html: offline plots template written" not in out
    assert "plots.html_template = ../plots_template/offline.html in .dvc/config.local" in out, out
    assert "html_template = ../plots_template/offline.html" in (in_tmp / ".dvc/config.local").read_text()
    assert "already names" in plots_template.point_dvc_at("plots_template/offline.html")

    subprocess.run(["dvc", "config", "--local", "plots.html_template", "mine.html"], check=True)
    assert "'mine.html' in .dvc/config.local, kept" in plots_template.point_dvc_at("plots_template/offline.html")
    assert "mine.html" in (in_tmp / ".dvc/config.local").read_text()


def test_an_unknown_revision_is_a_one_line_error(in_tmp, capsys):
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["dvc", "init", "-q"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], check=True)
    code, _, err = run(capsys, "report", "--rev", "no-such-experiment")
    assert code == 2 and err == "error: --rev no-such-experiment: unknown Git revision 'no-such-experiment'\n"
    code, _, err = run(capsys, "report", "--rev", "workspace")
    assert code == 2 and "name a revision or experiment" in err

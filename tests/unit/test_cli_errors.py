"""Bad input at the command line (issue 14): exit code 2, one line on stderr, nothing written.

Every probe fails before a model loads, so no output directory is created and nothing is
half-written. ``OSError`` on a path the user named is bad input too (exit 2); an ``OSError``
elsewhere is a bug (exit 1, "internal error").
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shiftlens.cli import _on_user_path, main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("shiftlens: error: ")
    return lines[0]


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (tmp_path / "a_file").write_text("not a directory\n")
    return tmp_path


@pytest.mark.parametrize("argv,msg", [
    (["report", "toy:base", "toy:tuned", "--prompts", "{d}/a_dir"],
     "prompt source '{d}/a_dir' is a directory, not a file"),
    (["report", "toy:base", "toy:tuned", "--prompts", "{d}/latin1.jsonl"],
     "{d}/latin1.jsonl:1: not UTF-8 text (byte 0xe9"),
    (["report", "toy:base", "toy:tuned", "--prompts", "{d}/missing.jsonl"], "does not exist"),
    (["demo", "--out", "{d}/a_file"], "output directory '{d}/a_file' is a file, not a directory"),
    (["demo", "--out", "{d}/a_file/sub"],
     "cannot create output directory '{d}/a_file/sub': '{d}/a_file' is a file"),
    (["demo", "--lenses", ""], "no lens selected in ''"),
    (["demo", "--lenses", " , "], "no lens selected"),
    (["demo", "--lenses", "attention,"], "no lens selected in 'attention,'"),
    (["demo", "--device", "tpu"], "unknown device 'tpu'; use cpu, cuda, cuda:N or mps"),
    (["demo", "--names", "just-one"], "--names takes BASE,TUNED"),
    (["demo", "--names", "x,x"], "the base and tuned names must differ"),
    (["report", "toy:base", "toy:tuned", "--names", "a,b,c"], "--names takes BASE,TUNED"),
])
def test_bad_input_exit_2_one_line_nothing_written(capsys, bad_files, argv, msg):
    d = str(bad_files)
    out = bad_files / "report-out"
    argv = [a.format(d=d) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    before = sorted(p.name for p in bad_files.iterdir())
    rc, stdout, err = run(capsys, *argv)
    assert rc == 2
    assert msg.format(d=d) in one_line_error(err)
    assert sorted(p.name for p in bad_files.iterdir()) == before  # nothing created
    assert not out.exists()


def test_unwritable_out_is_refused_before_loading(capsys, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root may write anywhere: simulate the permission the check reads
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    else:
        ro.chmod(0o500)
    try:
        rc, _, err = run(capsys, "demo", "--out", str(ro / "report"))
    finally:
        ro.chmod(0o700)
    assert rc == 2
    assert one_line_error(err) == (f"shiftlens: error: output directory '{ro / 'report'}' is not "
                                   f"writable (no write permission on '{ro}')")
    assert list(ro.iterdir()) == []


def test_oserror_on_a_user_path_is_bad_input_elsewhere_a_bug(capsys, tmp_path, monkeypatch):
    import shiftlens.cli as cli

    target = tmp_path / "out"

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(target / "figures" / "x.png"))

    monkeypatch.setattr(cli, "cmd_demo", denied)
    rc, _, err = run(capsys, "demo", "--out", str(target))
    assert rc == 2
    assert one_line_error(err) == (f"shiftlens: error: Permission denied: "
                                   f"'{target / 'figures' / 'x.png'}'")

    def elsewhere(args):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/usr/lib/nothing.so")

    monkeypatch.setattr(cli, "cmd_demo", elsewhere)
    rc, _, err = run(capsys, "demo", "--out", str(target))
    assert rc == 1 and err.startswith("shiftlens: internal error: FileNotFoundError")

    def disk_full(args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "cmd_demo", disk_full)
    rc, _, err = run(capsys, "demo", "--out", str(target))
    assert rc == 2 and one_line_error(err) == "shiftlens: error: No space left on device"


def test_user_path_matching():
    import argparse

    args = argparse.Namespace(out="/tmp/rep", prompts="data/p.jsonl", base="toy:base",
                              device_map="@/etc/map.json", seed=0)
    hit = OSError(errno.EACCES, "denied", "/tmp/rep/csv/a.csv")
    assert _on_user_path(hit, args)
    assert _on_user_path(OSError(errno.EISDIR, "is a dir", str(Path("data/p.jsonl").resolve())),
                         args)
    assert _on_user_path(OSError(errno.ENOENT, "missing", "/etc/map.json"), args)
    assert not _on_user_path(OSError(errno.ENOENT, "missing", "/tmp/repository/x"), args)
    assert not _on_user_path(OSError(errno.ENOENT, "missing"), args)  # no file, not the env


def test_subprocess_bad_prompts_is_one_line(tmp_path):
    (tmp_path / "p").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "shiftlens", "report", "toy:base", "toy:tuned",
                        "--prompts", str(tmp_path / "p"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("shiftlens: error: prompt source")
    assert not (tmp_path / "o").exists()

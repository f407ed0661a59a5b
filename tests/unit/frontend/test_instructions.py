"""Each instruction and each flag becomes the typed value it should (frontend.parse.parse)."""

from __future__ import annotations

import pytest

from stepbuild.frontend import instructions as ins
from stepbuild.frontend.parse import parse
from stepbuild.frontend.syntax import Heredoc


def one(text: str) -> ins.Instruction:
    """Parse `FROM scratch` + text and return the instruction after FROM."""
    return parse("FROM scratch\n" + text).instructions[1]


def test_from_with_platform_and_stage_name() -> None:
    stepfile = parse("from --platform=linux/amd64 golang:1.22 as Build\n")
    assert stepfile.instructions == (ins.From(
        ins.Location(1, 1, 1), "from --platform=linux/amd64 golang:1.22 as Build",
        "golang:1.22", "build", "linux/amd64"),)


def test_keywords_are_case_insensitive() -> None:
    kinds = [type(i) for i in parse("FrOm a\nrun x\nCoPy a b\nworkDIR /x\n").instructions]
    assert kinds == [ins.From, ins.Run, ins.Copy, ins.Workdir]


def test_run_shell_form_keeps_the_text() -> None:
    run = one("RUN echo  $HOME && \\\n    ls\n")
    assert isinstance(run, ins.Run)
    assert run.command == ins.Command(("echo  $HOME &&     ls",), shell_form=True)
    assert run.loc == ins.Location(2, 1, 3)


def test_run_exec_form() -> None:
    run = one('RUN ["/bin/echo", "a b"]\n')
    assert isinstance(run, ins.Run) and run.command == ins.Command(("/bin/echo", "a b"), False)


def test_run_invalid_json_falls_back_to_shell_form_with_a_warning() -> None:
    stepfile = parse("FROM scratch\nRUN ['single', 'quotes']\n")
    run = stepfile.instructions[1]
    assert isinstance(run, ins.Run)
    assert run.command == ins.Command(("['single', 'quotes']",), shell_form=True)
    assert any("looks like JSON" in w for w in stepfile.warnings)


def test_run_mounts_network_security() -> None:
    run = one(
        "RUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0700,uid=1,gid=2"
        " --mount=type=secret,id=tok,env=TOKEN,required=true"
        " --mount=type=bind,from=build,source=/out,target=/in,rw"
        " --mount=type=tmpfs,target=/t,size=64m"
        " --mount=type=ssh"
        " --network=none --security=insecure make\n")
    assert isinstance(run, ins.Run)
    cache, secret, bind, tmpfs, ssh = run.mounts
    assert (cache.type, cache.target, cache.id, cache.sharing, cache.mode, cache.uid,
            cache.gid) == ("cache", "/root/.cache", "pip", "locked", 0o700, 1, 2)
    assert (secret.type, secret.id, secret.env, secret.required) == ("secret", "tok", "TOKEN",
                                                                     True)
    assert (bind.from_, bind.source, bind.target, bind.readonly) == ("build", "/out", "/in",
                                                                     False)
    assert (tmpfs.target, tmpfs.size) == ("/t", 64 * 1024 * 1024)
    assert ssh.type == "ssh"
    assert (run.network, run.security) == ("none", "insecure")


def test_bind_mount_is_read_only_by_default_and_quotes_are_allowed() -> None:
    run = one('RUN --mount="type=bind,source=a b,target=/x" true\n')
    assert isinstance(run, ins.Run)
    assert run.mounts[0].readonly and run.mounts[0].source == "a b"


def test_mount_values_with_variables_wait_for_expansion() -> None:
    run = one("RUN --mount=type=cache,target=$HOME/.cache,uid=$UID true\n")
    assert isinstance(run, ins.Run)
    assert run.mounts[0].target == "$HOME/.cache" and run.mounts[0].uid is None
    assert run.mounts[0].raw == "type=cache,target=$HOME/.cache,uid=$UID"


def test_run_heredoc_is_an_inline_file() -> None:
    run = one("RUN <<-EOF bash\n\techo hi\n\tEOF\n")
    assert isinstance(run, ins.Run)
    assert run.command.args == ("<<-EOF bash",) and run.command.shell_form
    assert run.command.heredocs == (Heredoc("EOF", "\techo hi\n", True, True, 0),)
    assert run.loc.end_line == 4


def test_several_heredocs_on_one_line() -> None:
    run = one("RUN <<A cat - <<'B'\na $x\nA\nb $x\nB\n")
    assert isinstance(run, ins.Run)
    assert [(h.name, h.content, h.expand) for h in run.command.heredocs] == [
        ("A", "a $x\n", True), ("B", "b $x\n", False)]


def test_cmd_entrypoint_shell() -> None:
    cmd, entrypoint, shell = parse(
        'FROM a\nCMD ["sh"]\nENTRYPOINT exec /init\nSHELL ["/bin/bash", "-euo", "pipefail", "-c"]\n'
    ).instructions[1:]
    assert isinstance(cmd, ins.Cmd) and cmd.command == ins.Command(("sh",), False)
    assert isinstance(entrypoint, ins.Entrypoint)
    assert entrypoint.command == ins.Command(("exec /init",), True)
    assert isinstance(shell, ins.Shell)
    assert shell.argv == ("/bin/bash", "-euo", "pipefail", "-c")


def test_env_both_forms_keep_values_as_written() -> None:
    new, legacy = parse('FROM a\nENV A=1 B="two words" C=x\\ y\nENV PATH /usr/bin:$PATH\n'
                        ).instructions[1:]
    assert isinstance(new, ins.Env) and isinstance(legacy, ins.Env)
    assert new.pairs == (ins.KeyValue("A", "1"), ins.KeyValue("B", '"two words"'),
                         ins.KeyValue("C", "x\\ y"))
    assert legacy.pairs == (ins.KeyValue("PATH", "/usr/bin:$PATH"),)


def test_arg_with_and_without_defaults() -> None:
    arg = one('ARG A B=2 C="x y" D=\n')
    assert isinstance(arg, ins.Arg)
    assert arg.declarations == (ins.ArgDeclaration("A", None), ins.ArgDeclaration("B", "2"),
                                ins.ArgDeclaration("C", '"x y"'), ins.ArgDeclaration("D", ""))


def test_label_expose_volume_user_workdir_stopsignal_maintainer() -> None:
    stepfile = parse(
        'FROM a\nLABEL a.b=c "d e"=f\nEXPOSE 80/tcp 53/udp\nVOLUME ["/data", "/logs"]\n'
        "VOLUME /a /b\nUSER 1000:1000\nWORKDIR /srv/app\nSTOPSIGNAL SIGTERM\nMAINTAINER me\n")
    label, expose, volume_json, volume, user, workdir, stop, maintainer = (
        stepfile.instructions[1:])
    assert isinstance(label, ins.Label)
    assert label.pairs == (ins.KeyValue("a.b", "c"), ins.KeyValue('"d e"', "f"))
    assert isinstance(expose, ins.Expose) and expose.ports == ("80/tcp", "53/udp")
    assert isinstance(volume_json, ins.Volume) and volume_json.paths == ("/data", "/logs")
    assert isinstance(volume, ins.Volume) and volume.paths == ("/a", "/b")
    assert isinstance(user, ins.User) and user.user == "1000:1000"
    assert isinstance(workdir, ins.Workdir) and workdir.path == "/srv/app"
    assert isinstance(stop, ins.Stopsignal) and stop.signal == "SIGTERM"
    assert isinstance(maintainer, ins.Maintainer) and maintainer.name == "me"
    assert any("MAINTAINER is deprecated" in w for w in stepfile.warnings)


def test_copy_flags() -> None:
    copy = one("COPY --from=build --chown=app:app --chmod=0644 --link --parents"
               " --exclude=*.tmp --exclude=.git a b /dest/\n")
    assert copy == ins.Copy(
        ins.Location(2, 1, 2), copy.text, ("a", "b"), "/dest/", (), "build", "app:app", "0644",
        True, True, ("*.tmp", ".git"))


@pytest.mark.parametrize("value", ["u+x", "go-w,a+X", "u=rwx,go=u-w", "00644"])
def test_copy_chmod_takes_symbolic_modes_as_buildkit_does(value: str) -> None:
    # BuildKit (Dockerfile frontend 1.14+) takes a chmod(1) symbolic --chmod; issue 11 item 6.
    copy = one(f"COPY --chmod={value} a /b\n")
    assert isinstance(copy, ins.Copy) and copy.chmod == value


def test_copy_json_form_for_paths_with_spaces() -> None:
    copy = one('COPY ["my file", "dest dir/"]\n')
    assert isinstance(copy, ins.Copy)
    assert (copy.sources, copy.dest) == (("my file",), "dest dir/")


def test_copy_heredoc_sources() -> None:
    copy = one("COPY <<-EOF <<'RAW' /etc/\n\tline $x\nEOF\nraw $x\nRAW\n")
    assert isinstance(copy, ins.Copy)
    assert copy.inline == (ins.InlineSource("EOF", "line $x\n", True),
                           ins.InlineSource("RAW", "raw $x\n", False))
    assert copy.sources == () and copy.dest == "/etc/"


def test_add_flags() -> None:
    add = one("ADD --checksum=sha256:abc --keep-git-dir=true --chown=1 --chmod=755 --link"
              " --unpack=false https://example.com/x.tar /x/\n")
    assert isinstance(add, ins.Add)
    assert (add.checksum, add.keep_git_dir, add.chown, add.chmod, add.link, add.unpack) == (
        "sha256:abc", True, "1", "755", True, False)


def test_add_refuses_copy_only_flags() -> None:
    from stepbuild.errors import ParseError

    with pytest.raises(ParseError, match="unknown flag: --from"):
        one("ADD --from=x a /b\n")


def test_healthcheck_forms() -> None:
    none, shell, exec_form = parse(
        "FROM a\nHEALTHCHECK NONE\n"
        "HEALTHCHECK --interval=1m30s --timeout=3s --start-period=0s --start-interval=500ms"
        " --retries=3 CMD curl -f http://localhost/\n"
        'HEALTHCHECK CMD ["/bin/check", "--quiet"]\n').instructions[1:]
    assert isinstance(none, ins.Healthcheck) and none.test == ("NONE",)
    assert isinstance(shell, ins.Healthcheck)
    assert shell.test == ("CMD-SHELL", "curl -f http://localhost/")
    assert (shell.interval, shell.timeout, shell.start_period, shell.start_interval,
            shell.retries) == (90 * 10**9, 3 * 10**9, 0, 500 * 10**6, 3)
    assert isinstance(exec_form, ins.Healthcheck)
    assert exec_form.test == ("CMD", "/bin/check", "--quiet")


def test_onbuild_wraps_an_instruction() -> None:
    onbuild = one("ONBUILD COPY --chown=1 . /src\n")
    assert isinstance(onbuild, ins.Onbuild)
    assert isinstance(onbuild.trigger, ins.Copy) and onbuild.trigger.chown == "1"
    assert onbuild.expression == "COPY --chown=1 . /src"


def test_onbuild_run_heredoc_keeps_the_body_in_its_expression() -> None:
    onbuild = one("ONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert isinstance(onbuild, ins.Onbuild) and isinstance(onbuild.trigger, ins.Run)
    assert onbuild.trigger.command.heredocs[0].content == "echo hi\n"
    assert onbuild.expression == "RUN <<EOF\necho hi\nEOF"


def test_backtick_escape_directive() -> None:
    stepfile = parse("# escape=`\nFROM windows\nRUN dir c:\\ `\n  /s\nENV A=x`\"y\n")
    run, env = stepfile.instructions[1:]
    assert stepfile.escape == "`"
    assert isinstance(run, ins.Run) and run.command.args == ("dir c:\\   /s",)
    assert isinstance(env, ins.Env) and env.pairs[0].value == 'x`"y'


def test_directives_are_reported() -> None:
    stepfile = parse("# syntax=docker/dockerfile:1\n# check=skip=all\nFROM a\n")
    assert (stepfile.syntax, stepfile.check) == ("docker/dockerfile:1", "skip=all")


def test_late_directive_is_a_comment_with_a_warning() -> None:
    stepfile = parse("# hello\n# syntax=x\nFROM a\n")
    assert stepfile.syntax is None
    assert any("read as a comment" in w for w in stepfile.warnings)


def test_crlf_and_bom_and_no_final_newline() -> None:
    stepfile = parse("\ufeffFROM a\r\nRUN echo hi\r\nCMD x")
    run = stepfile.instructions[1]
    assert isinstance(run, ins.Run) and run.command.args == ("echo hi",)
    assert len(stepfile.instructions) == 3
